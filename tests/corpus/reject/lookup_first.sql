-- reason: UNSUPPORTED_JOIN
-- why: the public table must come after a private one
SELECT COUNT(*) FROM regions g JOIN residents r ON r.region = g.code
