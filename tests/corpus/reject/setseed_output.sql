-- reason: UNSUPPORTED_FUNCTION
-- why: state that survives requests
SELECT setseed(0.5), COUNT(*) FROM residents
