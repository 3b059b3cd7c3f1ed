-- reason: UNSUPPORTED_JOIN
-- why: ASOF joins match nearest rows
SELECT COUNT(*) FROM residents r ASOF JOIN social_insurance s ON r.person_id = s.person_id AND r.birth_year >= s.contribution
