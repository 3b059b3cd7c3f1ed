-- reason: UNSUPPORTED_EXPRESSION
-- why: a failing cast quotes the value
SELECT COUNT(*) FROM residents WHERE CAST(sex AS INTEGER) = 1
