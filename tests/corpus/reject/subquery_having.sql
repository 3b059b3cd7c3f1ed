-- reason: UNSUPPORTED_CONSTRUCT
-- why: HAVING inside a per-unit subquery would filter units by their own rows; not supported (and never silently ignored)
SELECT COUNT(*) FROM (SELECT person_id, SUM(contribution) AS s FROM social_insurance GROUP BY person_id HAVING SUM(contribution) > 5) t
