-- why: per-unit MIN/MAX keep the column bounds
SELECT AVG(lo), AVG(hi) FROM (SELECT person_id, MIN(contribution) AS lo, MAX(contribution) AS hi FROM social_insurance GROUP BY person_id) t
