-- why: ILIKE with a literal pattern
SELECT COUNT(*) FROM residents WHERE sex ILIKE 'f'
