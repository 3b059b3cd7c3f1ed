-- why: unqualified names that exist in one table only
SELECT SUM(contribution), AVG(income) FROM residents r JOIN social_insurance s USING (person_id) WHERE sex = 'F'
