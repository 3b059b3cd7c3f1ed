-- why: QUANTILE
SELECT QUANTILE(contribution, 0.75) FROM social_insurance
