-- reason: UNSUPPORTED_EXPRESSION
-- why: positional reference
SELECT COUNT(*) FROM residents WHERE #1 = 1
