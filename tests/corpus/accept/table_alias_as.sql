-- why: alias with AS
SELECT SUM(r.income) FROM residents AS r WHERE r.income > 0
