-- reason: SCALAR_SUBQUERY
-- why: a scalar subquery in WHERE picks one row
SELECT COUNT(*) FROM residents WHERE income > (SELECT MAX(income) FROM residents)
