-- reason: UNSUPPORTED_FUNCTION
-- why: Cyrillic o makes an unknown function
SELECT cоunt(*) FROM residents
