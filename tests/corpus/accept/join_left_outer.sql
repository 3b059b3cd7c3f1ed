-- why: LEFT OUTER JOIN
SELECT COUNT(s.contribution) FROM residents r LEFT OUTER JOIN social_insurance s USING (person_id)
