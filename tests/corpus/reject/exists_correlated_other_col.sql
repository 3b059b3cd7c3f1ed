-- reason: SUBQUERY_NOT_ON_PRIVACY_UNIT
-- why: correlation on a non-unit column
SELECT COUNT(*) FROM residents r WHERE EXISTS (SELECT 1 FROM social_insurance s WHERE s.region = r.region)
