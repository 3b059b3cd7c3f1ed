-- reason: NOT_A_SELECT
-- why: only SELECT statements are analyzed
CREATE MACRO leak(a) AS a
