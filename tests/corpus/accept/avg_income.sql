-- why: AVG of a bounded column
SELECT AVG(income) FROM residents
