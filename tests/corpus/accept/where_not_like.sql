-- why: NOT LIKE
SELECT COUNT(*) FROM residents WHERE region NOT LIKE '11%'
