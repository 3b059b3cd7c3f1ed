-- reason: NO_AGGREGATE
-- why: only keys, no aggregate
SELECT sex FROM residents GROUP BY sex
