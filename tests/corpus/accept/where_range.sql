-- why: range with AND
SELECT COUNT(*) FROM residents WHERE birth_year < 1990 AND birth_year >= 1960
