-- reason: UNSUPPORTED_FUNCTION
-- why: generate_series
SELECT COUNT(*) FROM residents WHERE len(generate_series(1, income)) > 0
