-- reason: UNSUPPORTED_EXPRESSION
-- why: casts come later
SELECT COUNT(*) FROM residents WHERE TRY_CAST(sex AS INTEGER) IS NULL
