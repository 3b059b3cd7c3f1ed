-- reason: UNSUPPORTED_JOIN
-- why: RIGHT joins are not supported
SELECT COUNT(*) FROM residents r RIGHT JOIN social_insurance s ON r.person_id = s.person_id
