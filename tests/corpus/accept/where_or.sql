-- why: OR
SELECT COUNT(*) FROM residents WHERE sex = 'F' OR income > 100000
