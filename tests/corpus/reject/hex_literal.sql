-- reason: UNSUPPORTED_EXPRESSION
-- why: blob literal
SELECT COUNT(*) FROM residents WHERE sex = x'46'
