-- why: per-unit AVG
SELECT AVG(m) FROM (SELECT person_id, AVG(contribution) AS m FROM social_insurance GROUP BY person_id) t
