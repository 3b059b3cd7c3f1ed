-- reason: IDENTIFIER_COLUMN
-- why: the unit may only appear in join conditions
SELECT COUNT(r.person_id) FROM residents r JOIN social_insurance s USING (person_id)
