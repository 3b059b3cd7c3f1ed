-- why: identifiers are case-insensitive
SELECT SEX, COUNT(*) FROM RESIDENTS GROUP BY SEX
