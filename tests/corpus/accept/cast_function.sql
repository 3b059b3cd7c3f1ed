-- why: CAST runs as TRY_CAST, so a failing cast is NULL, never an error
SELECT COUNT(*) FROM residents WHERE CAST(sex AS INTEGER) = 1
