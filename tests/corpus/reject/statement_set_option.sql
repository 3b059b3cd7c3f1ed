-- reason: NOT_A_SELECT
-- why: only SELECT statements are analyzed
SET enable_external_access = true
