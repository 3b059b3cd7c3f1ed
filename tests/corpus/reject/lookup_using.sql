-- reason: JOIN_NOT_ON_KEY
-- why: lookup joins need ON with the unique key
SELECT COUNT(*) FROM residents r JOIN regions g USING (region)
