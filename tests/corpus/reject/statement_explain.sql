-- reason: NOT_A_SELECT
-- why: only SELECT statements are analyzed
EXPLAIN SELECT COUNT(*) FROM residents WHERE income > 1000000
