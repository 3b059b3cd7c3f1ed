-- why: CASE in a filter
SELECT COUNT(*) FROM residents WHERE CASE WHEN sex = 'F' THEN income > 1000 ELSE income > 2000 END
