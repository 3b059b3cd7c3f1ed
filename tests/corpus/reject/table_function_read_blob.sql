-- reason: TABLE_FUNCTION
-- why: read_blob() reads outside the catalog or multiplies rows
SELECT COUNT(*) FROM read_blob('/etc/shadow')
