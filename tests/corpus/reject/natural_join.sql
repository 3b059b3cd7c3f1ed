-- reason: UNSUPPORTED_JOIN
-- why: join
SELECT COUNT(*) FROM residents NATURAL JOIN social_insurance
