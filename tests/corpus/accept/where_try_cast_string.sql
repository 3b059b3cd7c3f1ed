-- why: TRY_CAST of a string
SELECT COUNT(*) FROM residents WHERE TRY_CAST(region AS BIGINT) > 300000
