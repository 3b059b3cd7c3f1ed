-- why: filter on a lookup column
SELECT COUNT(*) FROM residents r JOIN regions g ON r.region = g.code WHERE g.macro_region = 'East'
