-- reason: UNSUPPORTED_CONSTRUCT
-- why: several groupings
SELECT sex, region, COUNT(*) FROM residents GROUP BY CUBE (sex, region)
