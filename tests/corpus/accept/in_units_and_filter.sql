-- why: semi-join combined with another filter
SELECT COUNT(*) FROM residents WHERE birth_year < 1970 AND person_id IN (SELECT person_id FROM social_insurance WHERE month = '2025-12')
