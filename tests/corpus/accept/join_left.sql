-- why: LEFT join on the unit yields at most 1 x 12 rows per unit
SELECT COUNT(*) FROM residents r LEFT JOIN social_insurance s ON r.person_id = s.person_id
