-- why: quarter from month
SELECT SUBSTRING(month, 6, 2) AS m, SUM(contribution) FROM social_insurance GROUP BY SUBSTRING(month, 6, 2)
