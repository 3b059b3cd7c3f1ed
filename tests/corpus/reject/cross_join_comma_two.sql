-- reason: CROSS_JOIN
-- why: comma join of two private tables
SELECT COUNT(*) FROM residents r, social_insurance s WHERE r.person_id = s.person_id
