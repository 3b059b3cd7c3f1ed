-- reason: TABLE_FUNCTION
-- why: range() reads outside the catalog or multiplies rows
SELECT COUNT(*) FROM range(1000000)
