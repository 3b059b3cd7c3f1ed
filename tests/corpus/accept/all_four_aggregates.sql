-- why: several aggregates in one query
SELECT COUNT(*) AS n, COUNT(income) AS k, SUM(income) AS s, AVG(income) AS a FROM residents
