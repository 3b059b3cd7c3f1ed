-- reason: TABLE_FUNCTION
-- why: read_csv_auto() reads outside the catalog or multiplies rows
SELECT COUNT(*) FROM read_csv_auto('/etc/passwd')
