-- reason: UNSUPPORTED_AGGREGATE
-- why: max_by is not a DP aggregate here
SELECT max_by(income, birth_year) FROM residents
