-- reason: IDENTIFIER_COLUMN
-- why: singles out one person
SELECT AVG(income) FROM residents WHERE person_id = 42
