-- reason: UNKNOWN_TABLE
-- why: not in the catalog; the message does not reveal other names
SELECT COUNT(*) FROM people
