-- reason: UNSUPPORTED_FUNCTION
-- why: only + - * / %
SELECT COUNT(*) FROM residents WHERE income // 2 > 10
