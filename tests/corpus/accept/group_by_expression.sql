-- why: a key expression over one column with a public domain
SELECT COUNT(*) FROM residents GROUP BY birth_year / 10
