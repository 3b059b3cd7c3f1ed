-- reason: UNSUPPORTED_CONSTRUCT
-- why: ORDER BY inside an aggregate
SELECT SUM(income ORDER BY birth_year) FROM residents
