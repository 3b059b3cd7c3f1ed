-- reason: IDENTIFIER_COLUMN
-- why: would publish the keys
SELECT COUNT(*) FROM residents GROUP BY id_number
