-- why: partition selection on a joined relation (K = 12)
SELECT r.birth_year, COUNT(*) FROM residents r JOIN social_insurance s USING (person_id) GROUP BY r.birth_year
