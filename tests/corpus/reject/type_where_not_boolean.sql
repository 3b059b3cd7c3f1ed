-- reason: TYPE_MISMATCH
-- why: WHERE needs a condition
SELECT COUNT(*) FROM residents WHERE income
