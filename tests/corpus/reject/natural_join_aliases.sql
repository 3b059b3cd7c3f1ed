-- reason: UNSUPPORTED_JOIN
-- why: NATURAL joins on every same-named column
SELECT COUNT(*) FROM residents r NATURAL JOIN social_insurance s
