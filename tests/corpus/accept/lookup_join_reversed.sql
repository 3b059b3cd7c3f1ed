-- why: lookup condition sides swapped
SELECT g.macro_region, AVG(r.income) FROM residents r JOIN regions g ON g.code = r.region GROUP BY g.macro_region
