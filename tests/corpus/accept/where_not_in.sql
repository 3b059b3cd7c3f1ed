-- why: NOT IN
SELECT COUNT(*) FROM residents WHERE region NOT IN ('110000', '310000')
