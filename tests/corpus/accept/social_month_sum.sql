-- why: second table
SELECT month, SUM(contribution) FROM social_insurance GROUP BY month
