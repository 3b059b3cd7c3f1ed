-- reason: NOT_A_SELECT
-- why: only SELECT statements are analyzed
PIVOT residents ON sex USING COUNT(*)
