-- reason: TYPE_MISMATCH
-- why: the implicit cast would fail on data and quote it
SELECT COUNT(*) FROM residents WHERE sex = 1
