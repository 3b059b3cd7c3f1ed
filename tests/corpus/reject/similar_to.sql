-- reason: UNSUPPORTED_FUNCTION
-- why: regular expressions
SELECT COUNT(*) FROM residents WHERE sex SIMILAR TO 'F.*'
