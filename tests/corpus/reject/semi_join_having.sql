-- reason: UNSUPPORTED_CONSTRUCT
-- why: HAVING inside an IN (subquery) semi-join is not supported (and never silently ignored)
SELECT COUNT(*) FROM residents WHERE person_id IN (SELECT person_id FROM social_insurance HAVING COUNT(*) > 1)
