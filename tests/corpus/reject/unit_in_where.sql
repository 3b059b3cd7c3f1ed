-- reason: IDENTIFIER_COLUMN
-- why: the unit column in a filter
SELECT COUNT(DISTINCT person_id) FROM residents WHERE person_id > 5
