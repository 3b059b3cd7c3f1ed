-- reason: UNSUPPORTED_CONSTRUCT
-- why: window function
SELECT row_number() OVER (ORDER BY income), COUNT(*) FROM residents
