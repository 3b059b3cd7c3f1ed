-- reason: NOT_A_SELECT
-- why: only SELECT statements are analyzed
COPY residents TO '/tmp/x.csv'
