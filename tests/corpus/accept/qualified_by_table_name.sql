-- why: table-qualified columns
SELECT residents.sex, COUNT(*) FROM residents GROUP BY residents.sex
