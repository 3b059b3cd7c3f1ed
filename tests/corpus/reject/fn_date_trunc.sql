-- reason: UNSUPPORTED_FUNCTION
-- why: no date columns yet
SELECT COUNT(*) FROM residents WHERE date_trunc('year', now()) IS NULL
