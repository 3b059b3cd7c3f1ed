-- why: line comment inside the query
SELECT COUNT(*) -- the count
FROM residents
