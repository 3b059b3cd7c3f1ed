-- reason: TYPE_MISMATCH
-- why: CASE branches of different types
SELECT COUNT(*) FROM residents WHERE CASE WHEN employed THEN 1 ELSE 'x' END = 1
