-- why: no public domain: keys go through DP partition selection (approx_dp grants only)
SELECT birth_year, COUNT(*) FROM residents GROUP BY birth_year
