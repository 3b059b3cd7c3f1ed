-- why: COUNT(1) counts rows
SELECT COUNT(1) FROM residents
