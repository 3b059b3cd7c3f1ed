-- why: IN over the same unit is a semi-join
SELECT COUNT(*) FROM residents WHERE person_id IN (SELECT person_id FROM social_insurance WHERE contribution > 5000)
