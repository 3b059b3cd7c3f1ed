-- reason: NOT_A_SELECT
-- why: only SELECT statements are analyzed
EXPLAIN ANALYZE SELECT COUNT(*) FROM residents
