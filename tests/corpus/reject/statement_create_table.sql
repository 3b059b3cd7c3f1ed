-- reason: NOT_A_SELECT
-- why: only SELECT statements are analyzed
CREATE TABLE t AS SELECT * FROM residents
