-- why: CTE joined to residents
WITH t AS (SELECT person_id, SUM(contribution) AS total FROM social_insurance GROUP BY person_id) SELECT COUNT(*) FROM t JOIN residents r USING (person_id) WHERE r.sex = 'M'
