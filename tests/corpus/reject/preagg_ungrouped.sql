-- reason: SUBQUERY_NOT_ON_PRIVACY_UNIT
-- why: an ungrouped subquery is not per unit
SELECT COUNT(*) FROM (SELECT contribution FROM social_insurance) t
