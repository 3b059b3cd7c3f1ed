-- reason: UNSUPPORTED_CONSTRUCT
-- why: an unused CTE
WITH t AS (SELECT person_id, COUNT(*) AS n FROM social_insurance GROUP BY person_id) SELECT COUNT(*) FROM residents
