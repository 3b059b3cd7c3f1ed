-- why: NOT IN over the same unit
SELECT AVG(income) FROM residents WHERE person_id NOT IN (SELECT person_id FROM social_insurance)
