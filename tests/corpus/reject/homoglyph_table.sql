-- reason: UNKNOWN_TABLE
-- why: Cyrillic e is a different name
SELECT COUNT(*) FROM rеsidents
