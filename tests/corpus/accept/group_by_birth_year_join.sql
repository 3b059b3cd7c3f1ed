-- why: (from issue-join) birth_year has no declared domain; the merged analyzer derives its public integer domain from the bounds 1930..2007, so no partition selection (and no delta) is needed
SELECT birth_year, COUNT(*) FROM residents GROUP BY birth_year
