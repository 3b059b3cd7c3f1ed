-- why: the unit need not be selected
SELECT AVG(total) FROM (SELECT SUM(contribution) AS total FROM social_insurance GROUP BY person_id) t
