-- reason: UNSUPPORTED_EXPRESSION
-- why: division by zero
SELECT COUNT(*) FROM residents WHERE income / 0 > 1
