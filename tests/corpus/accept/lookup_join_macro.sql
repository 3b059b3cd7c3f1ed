-- why: public lookup joined on its unique key; macro_region has a public domain
SELECT g.macro_region, COUNT(*) FROM residents r JOIN regions g ON r.region = g.code GROUP BY g.macro_region
