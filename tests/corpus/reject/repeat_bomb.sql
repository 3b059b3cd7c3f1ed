-- reason: UNSUPPORTED_FUNCTION
-- why: memory bomb
SELECT COUNT(*) FROM residents WHERE length(repeat('x', 2000000000)) > 0
