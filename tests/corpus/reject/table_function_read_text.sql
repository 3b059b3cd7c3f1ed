-- reason: TABLE_FUNCTION
-- why: read_text() reads outside the catalog or multiplies rows
SELECT COUNT(*) FROM read_text('/etc/passwd')
