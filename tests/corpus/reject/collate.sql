-- reason: UNSUPPORTED_EXPRESSION
-- why: COLLATE
SELECT COUNT(*) FROM residents WHERE sex COLLATE nocase = 'f'
