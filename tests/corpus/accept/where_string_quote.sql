-- why: escaped quote in a literal
SELECT COUNT(*) FROM residents WHERE sex = 'O''Brien'
