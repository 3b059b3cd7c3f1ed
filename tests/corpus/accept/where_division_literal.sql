-- why: division by a non-zero literal
SELECT COUNT(*) FROM residents WHERE income / 12 > 1000
