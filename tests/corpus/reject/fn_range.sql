-- reason: UNSUPPORTED_FUNCTION
-- why: range multiplies rows
SELECT COUNT(*) FROM residents WHERE len(range(income)) > 0
