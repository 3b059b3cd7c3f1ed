-- reason: NOT_A_SELECT
-- why: only SELECT statements are analyzed
COPY (SELECT * FROM residents) TO '/tmp/x.parquet'
