-- reason: UNSUPPORTED_CONSTRUCT
-- why: not yet supported
SELECT sex, COUNT(*) FROM residents GROUP BY sex ORDER BY sex
