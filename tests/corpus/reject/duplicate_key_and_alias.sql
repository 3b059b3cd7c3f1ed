-- reason: DUPLICATE_OUTPUT_NAME
-- why: alias collides with a key
SELECT sex, COUNT(*) AS sex FROM residents GROUP BY sex
