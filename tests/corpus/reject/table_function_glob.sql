-- reason: TABLE_FUNCTION
-- why: glob() reads outside the catalog or multiplies rows
SELECT COUNT(*) FROM glob('/srv/**')
