-- reason: UNSUPPORTED_EXPRESSION
-- why: ILIKE comes later
SELECT COUNT(*) FROM residents WHERE sex ILIKE 'f'
