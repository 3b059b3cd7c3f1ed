-- reason: CONSTANT_AGGREGATE
-- why: MAX of a constant is the constant, in every group
SELECT sex, MAX(2) AS m FROM residents GROUP BY sex
