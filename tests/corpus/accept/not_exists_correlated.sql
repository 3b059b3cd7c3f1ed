-- why: correlated NOT EXISTS
SELECT sex, COUNT(*) FROM residents r WHERE NOT EXISTS (SELECT 1 FROM social_insurance s WHERE r.person_id = s.person_id) GROUP BY sex
