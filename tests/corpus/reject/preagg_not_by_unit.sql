-- reason: SUBQUERY_NOT_ON_PRIVACY_UNIT
-- why: grouping by region mixes units
SELECT AVG(total) FROM (SELECT region, SUM(contribution) AS total FROM social_insurance GROUP BY region) t
