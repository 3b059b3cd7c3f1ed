-- why: COUNT(col) needs no bounds
SELECT COUNT(sex) FROM residents
