-- reason: SCALAR_SUBQUERY
-- why: scalar subquery folded into an output
SELECT COUNT(*), (SELECT COUNT(*) FROM social_insurance) FROM residents
