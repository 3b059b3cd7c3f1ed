-- reason: NOT_A_SELECT
-- why: only SELECT statements are analyzed
DROP TABLE residents
