-- reason: UNSUPPORTED_CONSTRUCT
-- why: subquery
SELECT COUNT(*) FROM residents WHERE EXISTS (SELECT 1 FROM social_insurance)
