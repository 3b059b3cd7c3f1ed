-- reason: UNSUPPORTED_FUNCTION
-- why: configuration read in an aggregate
SELECT SUM(length(current_setting('threads'))) FROM residents
