-- reason: TABLE_FUNCTION
-- why: unnest() reads outside the catalog or multiplies rows
SELECT COUNT(*) FROM unnest([1, 2, 3])
