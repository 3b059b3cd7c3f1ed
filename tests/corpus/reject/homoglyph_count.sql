-- reason: UNSUPPORTED_EXPRESSION
-- why: Cyrillic o makes an unknown function
SELECT cоunt(*) FROM residents
