-- reason: AMBIGUOUS_COLUMN
-- why: region exists in both tables
SELECT COUNT(*) FROM residents r JOIN social_insurance s USING (person_id) WHERE region = '110000'
