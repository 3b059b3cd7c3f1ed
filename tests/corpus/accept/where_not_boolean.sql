-- why: NOT on a boolean column
SELECT COUNT(*) FROM residents WHERE NOT employed
