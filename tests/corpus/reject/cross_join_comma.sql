-- reason: UNSUPPORTED_CONSTRUCT
-- why: cross join
SELECT COUNT(*) FROM residents, residents
