-- why: pre-aggregation with an inner filter
SELECT SUM(total) FROM (SELECT person_id, SUM(contribution) AS total FROM social_insurance WHERE month >= '2025-07' GROUP BY person_id) t
