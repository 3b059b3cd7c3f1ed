-- reason: TOO_MANY_JOINS
-- why: more than three tables
SELECT COUNT(*) FROM residents r JOIN social_insurance s USING (person_id) JOIN regions g ON r.region = g.code JOIN regions h ON s.region = h.code
