-- why: parentheses add no nodes
SELECT COUNT(*) FROM residents WHERE ((sex = 'F') AND (((income > 0))))
