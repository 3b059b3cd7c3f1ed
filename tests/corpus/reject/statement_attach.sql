-- reason: NOT_A_SELECT
-- why: only SELECT statements are analyzed
ATTACH '/tmp/evil.db' AS evil
