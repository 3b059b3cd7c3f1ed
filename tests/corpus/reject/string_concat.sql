-- reason: UNSUPPORTED_EXPRESSION
-- why: string functions come later
SELECT COUNT(*) FROM residents WHERE sex || 'x' = 'Fx'
