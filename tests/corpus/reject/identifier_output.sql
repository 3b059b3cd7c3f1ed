-- reason: IDENTIFIER_COLUMN
-- why: identifiers never appear
SELECT name, COUNT(*) FROM residents GROUP BY name
