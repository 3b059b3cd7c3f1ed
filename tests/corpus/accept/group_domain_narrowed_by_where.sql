-- why: WHERE month IN (...) narrows the public domain to those months (query text only)
SELECT month, SUM(contribution) AS total FROM social_insurance WHERE month IN ('2025-01', '2025-02', '2025-03') GROUP BY month
