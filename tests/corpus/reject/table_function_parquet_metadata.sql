-- reason: TABLE_FUNCTION
-- why: parquet_metadata() reads outside the catalog or multiplies rows
SELECT COUNT(*) FROM parquet_metadata('x.parquet')
