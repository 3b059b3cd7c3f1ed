-- reason: UNSUPPORTED_EXPRESSION
-- why: unnest multiplies rows
SELECT unnest([1, 2, 3]), COUNT(*) FROM residents
