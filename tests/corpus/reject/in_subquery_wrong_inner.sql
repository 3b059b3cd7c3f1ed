-- reason: SUBQUERY_NOT_ON_PRIVACY_UNIT
-- why: inner select must be the unit
SELECT COUNT(*) FROM residents WHERE person_id IN (SELECT contribution FROM social_insurance)
