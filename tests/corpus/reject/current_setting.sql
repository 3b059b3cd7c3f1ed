-- reason: UNSUPPORTED_EXPRESSION
-- why: configuration read
SELECT COUNT(*) FROM residents WHERE current_setting('threads') = 1
