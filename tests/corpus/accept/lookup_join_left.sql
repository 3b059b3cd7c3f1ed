-- why: LEFT lookup join keeps every private row once
SELECT COUNT(*) FROM residents r LEFT JOIN regions g ON r.region = g.code
