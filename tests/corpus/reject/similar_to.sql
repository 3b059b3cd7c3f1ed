-- reason: UNSUPPORTED_EXPRESSION
-- why: regular expressions
SELECT COUNT(*) FROM residents WHERE sex SIMILAR TO 'F.*'
