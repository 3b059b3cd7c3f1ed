-- why: LIKE with a literal pattern
SELECT COUNT(*) FROM residents WHERE sex LIKE 'F%'
