-- reason: UNSUPPORTED_EXPRESSION
-- why: aggregate argument must be a column
SELECT COUNT(r.*) FROM residents r
