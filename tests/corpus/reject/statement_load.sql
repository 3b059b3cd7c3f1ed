-- reason: NOT_A_SELECT
-- why: only SELECT statements are analyzed
LOAD httpfs
