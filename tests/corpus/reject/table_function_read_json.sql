-- reason: TABLE_FUNCTION
-- why: read_json() reads outside the catalog or multiplies rows
SELECT COUNT(*) FROM read_json('x.json')
