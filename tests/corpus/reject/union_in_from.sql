-- reason: UNSUPPORTED_CONSTRUCT
-- why: UNION inside FROM can duplicate units
SELECT COUNT(*) FROM (SELECT person_id FROM residents UNION ALL SELECT person_id FROM social_insurance) t
