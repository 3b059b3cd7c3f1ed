-- reason: SUBQUERY_NOT_ON_PRIVACY_UNIT
-- why: SELECT DISTINCT forgets row multiplicities
SELECT COUNT(*) FROM (SELECT DISTINCT region FROM social_insurance) t
