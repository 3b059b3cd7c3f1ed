-- reason: UNSUPPORTED_CONSTRUCT
-- why: a CTE used twice doubles each unit
WITH t AS (SELECT person_id, COUNT(*) AS n FROM social_insurance GROUP BY person_id) SELECT COUNT(*) FROM t JOIN t u USING (person_id)
