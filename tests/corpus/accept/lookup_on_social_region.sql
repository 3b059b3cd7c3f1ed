-- why: lookup keyed by the right table's region
SELECT g.macro_region, COUNT(*) FROM social_insurance s JOIN regions g ON s.region = g.code GROUP BY g.macro_region
