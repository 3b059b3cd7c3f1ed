-- reason: UNSUPPORTED_EXPRESSION
-- why: casts come later
SELECT COUNT(*) FROM residents WHERE income::VARCHAR = '5'
