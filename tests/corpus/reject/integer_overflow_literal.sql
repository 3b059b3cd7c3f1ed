-- reason: INVALID_LITERAL
-- why: beyond 64 bits
SELECT COUNT(*) FROM residents WHERE income > 99999999999999999999
