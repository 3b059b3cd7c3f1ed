-- why: an int64 column whose bounds span few integers has a public domain
SELECT birth_year, COUNT(*) FROM residents GROUP BY birth_year
