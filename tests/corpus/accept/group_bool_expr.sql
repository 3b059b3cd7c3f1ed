-- why: NOT of a boolean key
SELECT NOT employed AS unemployed, COUNT(*) FROM residents GROUP BY NOT employed
