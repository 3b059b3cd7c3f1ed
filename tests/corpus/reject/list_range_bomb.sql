-- reason: UNSUPPORTED_FUNCTION
-- why: memory bomb
SELECT COUNT(*) FROM residents WHERE list_sum(range(1000000000)) > 0
