-- reason: UNSUPPORTED_FUNCTION
-- why: lambdas
SELECT COUNT(*) FROM residents WHERE len(list_filter([income], x -> x > 1)) > 0
