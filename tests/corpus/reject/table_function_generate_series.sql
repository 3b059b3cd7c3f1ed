-- reason: TABLE_FUNCTION
-- why: generate_series() reads outside the catalog or multiplies rows
SELECT COUNT(*) FROM generate_series(1, 10)
