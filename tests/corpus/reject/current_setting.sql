-- reason: UNSUPPORTED_FUNCTION
-- why: configuration read
SELECT COUNT(*) FROM residents WHERE current_setting('threads') = 1
