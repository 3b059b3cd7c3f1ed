-- why: group column alias
SELECT sex AS gender, COUNT(*) AS n FROM residents GROUP BY sex
