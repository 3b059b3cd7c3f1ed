-- reason: UNSUPPORTED_EXPRESSION
-- why: aggregate argument must be a column
SELECT COUNT(1) FROM residents
