-- reason: TYPE_MISMATCH
-- why: mixed IN list
SELECT COUNT(*) FROM residents WHERE region IN ('110000', 120000)
