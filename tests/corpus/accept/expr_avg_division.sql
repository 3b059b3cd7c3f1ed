-- why: AVG of a column divided by a literal
SELECT AVG(income / 1000) FROM residents
