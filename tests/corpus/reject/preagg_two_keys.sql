-- reason: SUBQUERY_NOT_ON_PRIVACY_UNIT
-- why: grouping by unit and month gives 12 rows per unit
SELECT AVG(total) FROM (SELECT person_id, SUM(contribution) AS total FROM social_insurance GROUP BY person_id, month) t
