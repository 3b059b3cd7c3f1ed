-- reason: SELF_JOIN
-- why: a self-join on the unit squares K
SELECT COUNT(*) FROM social_insurance a JOIN social_insurance b ON a.person_id = b.person_id
