-- reason: UNSUPPORTED_AGGREGATE
-- why: list releases values
SELECT list(income) FROM residents
