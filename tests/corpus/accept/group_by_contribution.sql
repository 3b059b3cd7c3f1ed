-- why: no public domain: keys go through DP partition selection (approx_dp grants only)
SELECT COUNT(*) FROM social_insurance GROUP BY contribution
