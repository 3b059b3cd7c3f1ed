-- why: literal on the left
SELECT COUNT(*) FROM residents WHERE 1990 < birth_year
