-- why: != maps to <>
SELECT COUNT(*) FROM residents WHERE sex != 'F'
