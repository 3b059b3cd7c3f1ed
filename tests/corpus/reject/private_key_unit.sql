-- reason: IDENTIFIER_COLUMN
-- why: the unit is never a key
SELECT COUNT(*) FROM residents r JOIN social_insurance s USING (person_id) GROUP BY s.person_id
