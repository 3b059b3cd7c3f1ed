-- why: NULL in an IN list
SELECT COUNT(*) FROM residents WHERE region IN ('110000', NULL)
