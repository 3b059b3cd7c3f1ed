-- reason: SUBQUERY_NOT_ON_PRIVACY_UNIT
-- why: subquery
SELECT COUNT(*) FROM residents WHERE EXISTS (SELECT 1 FROM social_insurance)
