-- reason: NOT_A_SELECT
-- why: only SELECT statements are analyzed
INSERT INTO residents VALUES (1)
