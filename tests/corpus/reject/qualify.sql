-- reason: UNSUPPORTED_CONSTRUCT
-- why: window filter
SELECT COUNT(*) FROM residents QUALIFY row_number() OVER () = 1
