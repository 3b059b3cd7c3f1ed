-- why: SUM of a scaled column
SELECT SUM(income * 2) FROM residents
