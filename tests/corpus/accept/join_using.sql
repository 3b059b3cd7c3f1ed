-- why: USING (person_id) is the same unit join
SELECT COUNT(*) FROM residents JOIN social_insurance USING (person_id)
