-- why: group by a public-domain column of the left table
SELECT r.sex, SUM(s.contribution) FROM residents r JOIN social_insurance s USING (person_id) GROUP BY r.sex
