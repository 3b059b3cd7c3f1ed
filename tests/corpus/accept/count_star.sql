-- why: the simplest DP query
SELECT COUNT(*) FROM residents
