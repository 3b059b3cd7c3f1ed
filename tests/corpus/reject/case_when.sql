-- reason: UNSUPPORTED_EXPRESSION
-- why: conditional errors
SELECT COUNT(*) FROM residents WHERE CASE WHEN income > 5 THEN 1 / 0 ELSE 1 END = 1
