-- reason: JOIN_NOT_ON_PRIVACY_UNIT
-- why: USING a non-unit column
SELECT COUNT(*) FROM residents JOIN social_insurance USING (region)
