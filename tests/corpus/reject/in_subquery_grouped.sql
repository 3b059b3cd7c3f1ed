-- reason: SUBQUERY_NOT_ON_PRIVACY_UNIT
-- why: grouped IN subquery
SELECT COUNT(*) FROM residents WHERE person_id IN (SELECT person_id FROM social_insurance GROUP BY person_id)
