-- reason: UNSUPPORTED_FUNCTION
-- why: session state
SELECT COUNT(*) FROM residents WHERE income > getvariable('x')
