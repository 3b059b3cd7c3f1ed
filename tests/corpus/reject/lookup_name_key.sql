-- reason: JOIN_KEY_NOT_UNIQUE
-- why: name is not the declared unique key
SELECT COUNT(*) FROM residents r JOIN regions g ON r.region = g.name
