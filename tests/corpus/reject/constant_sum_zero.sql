-- reason: CONSTANT_AGGREGATE
-- why: SUM of 0 is 0 (no noise scale fits a sensitivity of 0)
SELECT SUM(birth_year * 0) FROM residents
