-- reason: INVALID_LITERAL
-- why: not finite
SELECT COUNT(*) FROM residents WHERE income > 1e400
