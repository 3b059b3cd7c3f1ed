-- why: equality
SELECT COUNT(*) FROM residents WHERE sex = 'F'
