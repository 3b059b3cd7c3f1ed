-- reason: UNSUPPORTED_AGGREGATE
-- why: bitwise aggregates
SELECT bit_and(income) FROM residents
