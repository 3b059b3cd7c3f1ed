-- reason: NOT_A_SELECT
-- why: only SELECT statements are analyzed
IMPORT DATABASE '/tmp/dump'
