-- why: SUM of a non-zero constant is that constant times the row count: data, priced like any sum
SELECT SUM(1) AS n FROM residents
