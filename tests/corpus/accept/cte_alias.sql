-- why: CTE referenced under an alias
WITH t AS (SELECT person_id, COUNT(*) AS n FROM social_insurance GROUP BY person_id) SELECT SUM(x.n) FROM t x
