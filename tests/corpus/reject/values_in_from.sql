-- reason: UNSUPPORTED_CONSTRUCT
-- why: not a dataset table
SELECT COUNT(*) FROM (VALUES (1), (2)) t(x)
