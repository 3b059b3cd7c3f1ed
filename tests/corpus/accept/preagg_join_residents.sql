-- why: pre-aggregation joined to residents on the unit: K = 1 x 1
SELECT r.sex, AVG(t.total) FROM (SELECT person_id, SUM(contribution) AS total FROM social_insurance GROUP BY person_id) t JOIN residents r ON t.person_id = r.person_id GROUP BY r.sex
