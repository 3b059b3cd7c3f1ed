-- reason: UNSUPPORTED_CONSTRUCT
-- why: implicit keys
SELECT sex, COUNT(*) FROM residents GROUP BY ALL
