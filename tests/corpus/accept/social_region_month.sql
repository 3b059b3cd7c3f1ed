-- why: 372 groups
SELECT region, month, AVG(contribution) FROM social_insurance GROUP BY region, month
