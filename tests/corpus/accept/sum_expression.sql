-- why: expressions inside aggregates get derived bounds
SELECT SUM(income * 2) FROM residents
