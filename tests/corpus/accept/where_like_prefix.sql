-- why: LIKE prefix
SELECT COUNT(*) FROM residents WHERE region LIKE '11%'
