-- reason: UNSUPPORTED_FUNCTION
-- why: regexp in a key
SELECT COUNT(*) FROM residents GROUP BY regexp_extract(sex, '(.)')
