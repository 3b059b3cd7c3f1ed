-- why: a per-unit count lies in [0, K] = [0, 12], a public integer domain derived from K
SELECT n, COUNT(*) FROM (SELECT person_id, COUNT(*) AS n FROM social_insurance GROUP BY person_id) t GROUP BY n
