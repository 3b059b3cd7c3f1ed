-- why: filters on columns of both tables
SELECT COUNT(*) FROM residents r JOIN social_insurance s ON r.person_id = s.person_id WHERE r.birth_year > 1980 AND s.contribution > 1000
