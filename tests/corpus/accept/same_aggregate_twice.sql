-- why: identical aggregates share one release
SELECT COUNT(*) AS a, COUNT(*) AS b FROM residents
