-- why: partition selection on a per-unit count
SELECT n, COUNT(*) FROM (SELECT person_id, COUNT(*) AS n FROM social_insurance GROUP BY person_id) t GROUP BY n
