-- reason: UNKNOWN_TABLE
-- why: zero-width space makes a different name
SELECT COUNT(*) FROM resi​dents
