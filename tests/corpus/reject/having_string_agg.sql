-- reason: UNSUPPORTED_AGGREGATE
-- why: HAVING with an unsupported aggregate
SELECT sex, COUNT(*) FROM residents GROUP BY sex HAVING string_agg(region, ',') = 'x'
