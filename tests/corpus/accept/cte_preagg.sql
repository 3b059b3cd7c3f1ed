-- why: CTE used once
WITH t AS (SELECT person_id, SUM(contribution) AS total FROM social_insurance GROUP BY person_id) SELECT AVG(total) FROM t
