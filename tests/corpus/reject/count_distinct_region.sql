-- reason: UNSUPPORTED_CONSTRUCT
-- why: distinct counts of non-unit columns have other sensitivity
SELECT COUNT(DISTINCT region) FROM residents
