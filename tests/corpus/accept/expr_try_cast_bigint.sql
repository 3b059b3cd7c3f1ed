-- why: TRY_CAST of a number
SELECT SUM(TRY_CAST(income / 7 AS BIGINT)) FROM residents
