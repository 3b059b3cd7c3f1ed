-- reason: UNSUPPORTED_EXPRESSION
-- why: no date types
SELECT COUNT(*) FROM residents WHERE CAST(region AS DATE) IS NULL
