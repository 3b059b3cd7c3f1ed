-- reason: DUPLICATE_OUTPUT_NAME
-- why: both are named avg_income
SELECT AVG(income), mean(income) FROM residents
