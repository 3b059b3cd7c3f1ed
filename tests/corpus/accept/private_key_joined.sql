-- why: a joined relation (K = 12) grouped by r.birth_year, whose public domain comes from its bounds
SELECT r.birth_year, COUNT(*) FROM residents r JOIN social_insurance s USING (person_id) GROUP BY r.birth_year
