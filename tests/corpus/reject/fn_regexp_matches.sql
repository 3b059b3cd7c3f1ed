-- reason: UNSUPPORTED_FUNCTION
-- why: catastrophic regular expressions
SELECT COUNT(*) FROM residents WHERE regexp_matches(region, '(a+)+$')
