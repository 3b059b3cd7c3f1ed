-- reason: SELF_JOIN
-- why: residents twice among three tables
SELECT COUNT(*) FROM residents a JOIN social_insurance s USING (person_id) JOIN residents b ON a.person_id = b.person_id
