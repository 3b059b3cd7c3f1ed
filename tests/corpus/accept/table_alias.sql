-- why: alias-qualified columns
SELECT t.sex, COUNT(*) FROM residents t GROUP BY t.sex
