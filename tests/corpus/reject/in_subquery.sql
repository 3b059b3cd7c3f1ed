-- reason: UNSUPPORTED_CONSTRUCT
-- why: subquery
SELECT COUNT(*) FROM residents WHERE region IN (SELECT region FROM social_insurance)
