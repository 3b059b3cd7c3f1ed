-- reason: TABLE_FUNCTION
-- why: query() reads outside the catalog or multiplies rows
SELECT COUNT(*) FROM query('SELECT * FROM residents')
