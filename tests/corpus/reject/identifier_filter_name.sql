-- reason: IDENTIFIER_COLUMN
-- why: singles out one person
SELECT SUM(income) FROM residents WHERE name = 'Alice'
