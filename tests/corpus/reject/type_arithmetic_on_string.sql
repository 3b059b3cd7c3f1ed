-- reason: TYPE_MISMATCH
-- why: arithmetic on a string
SELECT COUNT(*) FROM residents WHERE sex + 1 > 0
