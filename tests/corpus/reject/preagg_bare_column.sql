-- reason: SUBQUERY_NOT_ON_PRIVACY_UNIT
-- why: a non-aggregated column in a per-unit subquery
SELECT COUNT(*) FROM (SELECT person_id, month FROM social_insurance GROUP BY person_id, month) t
