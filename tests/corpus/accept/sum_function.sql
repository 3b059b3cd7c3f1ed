-- why: LEAST gives derived bounds
SELECT SUM(least(income, 10)) FROM residents
