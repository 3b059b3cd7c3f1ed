-- why: people per month
SELECT month, COUNT(DISTINCT person_id) FROM social_insurance GROUP BY month
