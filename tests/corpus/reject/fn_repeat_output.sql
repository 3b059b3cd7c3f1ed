-- reason: UNSUPPORTED_FUNCTION
-- why: memory bomb
SELECT SUM(length(repeat(sex, 1000000))) FROM residents
