-- reason: UNSUPPORTED_EXPRESSION
-- why: session state
SELECT COUNT(*) FROM residents WHERE income > getvariable('x')
