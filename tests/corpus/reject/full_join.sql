-- reason: UNSUPPORTED_JOIN
-- why: FULL joins are not supported
SELECT COUNT(*) FROM residents r FULL JOIN social_insurance s ON r.person_id = s.person_id
