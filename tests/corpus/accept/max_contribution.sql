-- why: MAX per month
SELECT month, MAX(contribution) FROM social_insurance GROUP BY month
