-- reason: UNSUPPORTED_CONSTRUCT
-- why: distinct counts have other sensitivity
SELECT COUNT(DISTINCT income) FROM residents
