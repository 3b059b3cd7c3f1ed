-- reason: NOT_A_SELECT
-- why: only SELECT statements are analyzed
UPDATE residents SET income = 0
