-- reason: UNKNOWN_TABLE
-- why: replacement scan of a URL
SELECT COUNT(*) FROM 'https://example.com/x.parquet'
