-- reason: TABLE_FUNCTION
-- why: query_table() reads outside the catalog or multiplies rows
SELECT COUNT(*) FROM query_table('residents')
