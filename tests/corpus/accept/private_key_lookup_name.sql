-- why: partition selection on a lookup column without domain
SELECT g.name, COUNT(*) FROM residents r JOIN regions g ON r.region = g.code GROUP BY g.name
