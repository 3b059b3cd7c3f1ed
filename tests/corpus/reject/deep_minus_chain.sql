-- reason: QUERY_TOO_COMPLEX
-- why: deep unary minus chain
SELECT COUNT(*) FROM residents WHERE - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - income > 0
