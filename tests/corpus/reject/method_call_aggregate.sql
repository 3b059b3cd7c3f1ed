-- reason: UNSUPPORTED_EXPRESSION
-- why: dot-call syntax
SELECT income.sum() FROM residents
