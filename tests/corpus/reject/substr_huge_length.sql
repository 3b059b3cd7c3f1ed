-- reason: UNSUPPORTED_EXPRESSION
-- why: SUBSTRING lengths beyond limits could raise
SELECT COUNT(*) FROM residents WHERE substring(sex, 1, 9999999999) = 'F'
