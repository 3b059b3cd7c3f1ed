-- reason: UNSUPPORTED_EXPRESSION
-- why: struct literal
SELECT COUNT(*) FROM residents WHERE {'a': income} = {'a': 1}
