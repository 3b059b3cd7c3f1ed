-- reason: UNSUPPORTED_EXPRESSION
-- why: empty IN parses as a function call
SELECT COUNT(*) FROM residents WHERE sex IN ()
