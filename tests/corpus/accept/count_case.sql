-- why: COUNT of a CASE
SELECT COUNT(CASE WHEN employed THEN 1 END) FROM residents
