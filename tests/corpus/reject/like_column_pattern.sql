-- reason: UNSUPPORTED_EXPRESSION
-- why: LIKE patterns must be literals
SELECT COUNT(*) FROM residents WHERE sex LIKE region
