-- why: unicode literal
SELECT COUNT(*) FROM residents WHERE sex = '女'
