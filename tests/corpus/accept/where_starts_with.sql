-- why: STARTS_WITH
SELECT COUNT(*) FROM residents WHERE starts_with(region, '3')
