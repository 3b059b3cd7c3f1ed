-- reason: SUBQUERY_NOT_ON_PRIVACY_UNIT
-- why: subquery
SELECT COUNT(*) FROM residents WHERE region IN (SELECT region FROM social_insurance)
