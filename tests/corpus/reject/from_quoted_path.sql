-- reason: UNKNOWN_TABLE
-- why: a quoted path parses as a base table; it is just an unknown name
SELECT COUNT(*) FROM '/etc/passwd'
