-- why: outer filter on a derived column
SELECT COUNT(*) FROM (SELECT person_id, SUM(contribution) AS total FROM social_insurance GROUP BY person_id) t WHERE total > 50000
