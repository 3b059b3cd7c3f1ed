-- reason: UNSUPPORTED_CONSTRUCT
-- why: no table
SELECT 1
