-- reason: UNSUPPORTED_EXPRESSION
-- why: only unary minus
SELECT COUNT(*) FROM residents WHERE +income > 10
