-- reason: UNSUPPORTED_CONSTRUCT
-- why: distinct of an expression
SELECT COUNT(DISTINCT income / 2) FROM residents
