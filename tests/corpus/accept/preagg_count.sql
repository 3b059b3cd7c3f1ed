-- why: per-unit COUNT(*) in [0, 12]
SELECT AVG(n) FROM (SELECT person_id, COUNT(*) AS n FROM social_insurance GROUP BY person_id) t
