-- why: EXISTS with just the correlation
SELECT COUNT(*) FROM residents r WHERE EXISTS (SELECT * FROM social_insurance s WHERE s.person_id = r.person_id)
