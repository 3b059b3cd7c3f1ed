-- why: partition selection on contribution with AVG of month-independent value
SELECT contribution, COUNT(*) FROM social_insurance GROUP BY contribution
