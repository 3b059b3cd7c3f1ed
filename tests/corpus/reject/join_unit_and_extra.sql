-- reason: JOIN_NOT_ON_PRIVACY_UNIT
-- why: extra conditions in ON are not a plain unit equality
SELECT COUNT(*) FROM residents r JOIN social_insurance s ON r.person_id = s.person_id AND s.contribution > 5
