-- why: no public domain: keys go through DP partition selection (approx_dp grants only)
SELECT income, COUNT(*) FROM residents GROUP BY income
