-- reason: UNSUPPORTED_EXPRESSION
-- why: not yet supported
SELECT COUNT(*) FROM residents WHERE sex IS DISTINCT FROM 'F'
