-- reason: UNSUPPORTED_CONSTRUCT
-- why: join
SELECT COUNT(*) FROM residents JOIN social_insurance USING (person_id)
