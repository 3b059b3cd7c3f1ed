-- reason: CONSTANT_AGGREGATE
-- why: an expression clamped to one point is a constant; its average is that point
SELECT AVG(CLAMP(income, 5, 5)) FROM residents
