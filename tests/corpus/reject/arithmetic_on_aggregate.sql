-- reason: UNSUPPORTED_EXPRESSION
-- why: post-processing comes later
SELECT COUNT(*) + 1 FROM residents
