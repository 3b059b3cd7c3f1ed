-- why: CONTAINS
SELECT COUNT(*) FROM residents WHERE contains(region, '00')
