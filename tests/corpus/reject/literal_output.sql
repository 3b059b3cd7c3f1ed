-- reason: UNSUPPORTED_EXPRESSION
-- why: constants in outputs are not supported
SELECT 1, COUNT(*) FROM residents
