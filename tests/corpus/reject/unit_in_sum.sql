-- reason: IDENTIFIER_COLUMN
-- why: the unit column is usable only in COUNT(DISTINCT)
SELECT SUM(person_id) FROM residents
