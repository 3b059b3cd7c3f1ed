-- reason: TABLE_FUNCTION
-- why: read_parquet() reads outside the catalog or multiplies rows
SELECT COUNT(*) FROM read_parquet('/srv/data/*.parquet')
