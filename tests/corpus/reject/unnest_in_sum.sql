-- reason: UNSUPPORTED_FUNCTION
-- why: unnest
SELECT SUM(unnest([income])) FROM residents
