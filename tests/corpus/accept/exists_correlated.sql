-- why: correlated EXISTS on the unit
SELECT COUNT(*) FROM residents r WHERE EXISTS (SELECT 1 FROM social_insurance s WHERE s.person_id = r.person_id AND s.contribution > 5000)
