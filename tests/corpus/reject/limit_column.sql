-- reason: UNSUPPORTED_EXPRESSION
-- why: LIMIT must be a literal
SELECT COUNT(*) FROM residents LIMIT income
