-- why: INNER JOIN spelled out
SELECT COUNT(*) FROM residents r INNER JOIN social_insurance s ON r.person_id = s.person_id
