-- reason: UNSUPPORTED_EXPRESSION
-- why: parameters
SELECT COUNT(*) FROM residents WHERE income > ?
