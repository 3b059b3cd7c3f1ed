-- why: a boolean column is a condition
SELECT COUNT(*) FROM residents WHERE employed
