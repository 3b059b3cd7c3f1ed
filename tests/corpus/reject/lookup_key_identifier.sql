-- reason: IDENTIFIER_COLUMN
-- why: an identifier cannot be a lookup key
SELECT COUNT(*) FROM residents r JOIN regions g ON r.name = g.code
