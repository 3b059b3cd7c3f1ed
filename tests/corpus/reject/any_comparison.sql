-- reason: SUBQUERY_NOT_ON_PRIVACY_UNIT
-- why: > ANY compares against other units
SELECT COUNT(*) FROM residents WHERE person_id > ANY (SELECT person_id FROM social_insurance)
