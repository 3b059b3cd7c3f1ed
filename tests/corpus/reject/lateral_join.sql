-- reason: CROSS_JOIN
-- why: LATERAL subqueries multiply rows
SELECT COUNT(*) FROM residents r, LATERAL (SELECT * FROM social_insurance s WHERE s.person_id = r.person_id) x
