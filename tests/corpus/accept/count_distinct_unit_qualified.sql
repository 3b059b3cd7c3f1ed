-- why: qualified unit column
SELECT COUNT(DISTINCT s.person_id) FROM social_insurance s
