-- why: TRY_CAST is allowed
SELECT COUNT(*) FROM residents WHERE TRY_CAST(sex AS INTEGER) IS NULL
