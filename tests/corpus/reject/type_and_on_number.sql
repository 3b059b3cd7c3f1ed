-- reason: TYPE_MISMATCH
-- why: AND on a number
SELECT COUNT(*) FROM residents WHERE employed AND 1
