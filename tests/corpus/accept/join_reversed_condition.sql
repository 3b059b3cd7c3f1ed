-- why: condition sides may be swapped
SELECT COUNT(*) FROM residents r JOIN social_insurance s ON s.person_id = r.person_id
