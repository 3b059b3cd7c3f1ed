-- why: (sex, birth_year): both keys have public domains (birth_year from its integer bounds)
SELECT sex, birth_year, COUNT(*) FROM residents GROUP BY sex, birth_year
