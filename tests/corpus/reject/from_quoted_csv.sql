-- reason: UNKNOWN_TABLE
-- why: replacement scan of a file
SELECT COUNT(*) FROM 'data.csv'
