-- why: per-unit pre-aggregation; outer K = 1, bounds [0, 12*10000]
SELECT AVG(total) FROM (SELECT person_id, SUM(contribution) AS total FROM social_insurance GROUP BY person_id) t
