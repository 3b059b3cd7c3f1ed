-- why: unit join plus lookup: 3 tables
SELECT g.macro_region, SUM(s.contribution) FROM residents r JOIN social_insurance s ON r.person_id = s.person_id JOIN regions g ON r.region = g.code GROUP BY g.macro_region
