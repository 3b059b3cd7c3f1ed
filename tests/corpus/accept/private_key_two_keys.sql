-- why: partition selection over (sex, birth_year)
SELECT sex, birth_year, COUNT(*) FROM residents GROUP BY sex, birth_year
