-- why: semi-join inside a joined query
SELECT COUNT(*) FROM social_insurance s JOIN residents r USING (person_id) WHERE r.person_id IN (SELECT person_id FROM social_insurance WHERE contribution > 9000)
