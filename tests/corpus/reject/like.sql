-- reason: UNSUPPORTED_EXPRESSION
-- why: LIKE comes later
SELECT COUNT(*) FROM residents WHERE sex LIKE 'F%'
