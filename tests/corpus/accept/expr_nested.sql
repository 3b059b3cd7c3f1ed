-- why: nested arithmetic
SELECT AVG((income - 1000) * 2 / 4 + 7) FROM residents
