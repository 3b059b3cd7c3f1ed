-- reason: SCALAR_SUBQUERY
-- why: picks out one row
SELECT COUNT(*) FROM residents WHERE income > (SELECT income FROM residents WHERE birth_year = 1950)
