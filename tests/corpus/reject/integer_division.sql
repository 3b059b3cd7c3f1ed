-- reason: UNSUPPORTED_EXPRESSION
-- why: only + - * / %
SELECT COUNT(*) FROM residents WHERE income // 2 > 10
