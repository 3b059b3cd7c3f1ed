-- reason: UNSUPPORTED_CONSTRUCT
-- why: several groupings
SELECT sex, COUNT(*) FROM residents GROUP BY ROLLUP (sex)
