-- reason: UNSUPPORTED_EXPRESSION
-- why: subscripts
SELECT COUNT(*) FROM residents WHERE sex[1] = 'F'
