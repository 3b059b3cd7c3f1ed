-- reason: UNSUPPORTED_EXPRESSION
-- why: list aggregates release rows
SELECT COUNT(*) FROM (SELECT person_id, list(contribution) AS l FROM social_insurance GROUP BY person_id) t
