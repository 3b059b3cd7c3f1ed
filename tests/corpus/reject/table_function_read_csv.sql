-- reason: TABLE_FUNCTION
-- why: read_csv() reads outside the catalog or multiplies rows
SELECT COUNT(*) FROM read_csv('/etc/passwd')
