-- why: NOT
SELECT COUNT(*) FROM residents WHERE NOT (sex = 'F')
