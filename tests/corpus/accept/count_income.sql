-- why: COUNT(col) counts non-NULL values
SELECT COUNT(income) FROM residents
