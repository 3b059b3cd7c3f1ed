-- reason: UNSUPPORTED_FUNCTION
-- why: regular expressions
SELECT SUM(length(regexp_replace(sex, '(x*)*', 'y'))) FROM residents
