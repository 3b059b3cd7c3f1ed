-- reason: SUBQUERY_NOT_ON_PRIVACY_UNIT
-- why: uncorrelated EXISTS is a global data-dependent switch
SELECT COUNT(*) FROM residents r WHERE EXISTS (SELECT 1 FROM social_insurance s WHERE s.contribution > 9999)
