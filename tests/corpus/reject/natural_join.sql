-- reason: UNSUPPORTED_CONSTRUCT
-- why: join
SELECT COUNT(*) FROM residents NATURAL JOIN social_insurance
