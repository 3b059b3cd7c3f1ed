-- reason: IDENTIFIER_COLUMN
-- why: identifier keys are never released
SELECT id_number, COUNT(*) FROM residents GROUP BY id_number
