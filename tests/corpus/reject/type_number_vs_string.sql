-- reason: TYPE_MISMATCH
-- why: string against number
SELECT COUNT(*) FROM residents WHERE income = 'abc'
