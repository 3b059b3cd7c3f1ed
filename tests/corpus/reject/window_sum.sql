-- reason: UNSUPPORTED_CONSTRUCT
-- why: window functions release per-row values
SELECT SUM(income) OVER () FROM residents
