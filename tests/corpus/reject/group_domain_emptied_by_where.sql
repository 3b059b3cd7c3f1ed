-- reason: GROUP_KEY_NOT_PUBLIC
-- why: the WHERE literal excludes every declared month, so no group could hold a row (decided from the query text)
SELECT month, COUNT(*) AS n FROM social_insurance WHERE month = '2031-01' GROUP BY month
