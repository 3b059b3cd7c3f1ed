-- reason: UNSUPPORTED_FUNCTION
-- why: list functions
SELECT COUNT(*) FROM residents WHERE list_contains(list_value(income), 1)
