-- reason: UNSUPPORTED_EXPRESSION
-- why: list literal
SELECT COUNT(*) FROM residents WHERE [income] = [1]
