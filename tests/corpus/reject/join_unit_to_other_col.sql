-- reason: JOIN_NOT_ON_PRIVACY_UNIT
-- why: unit equal to another column
SELECT COUNT(*) FROM residents r JOIN social_insurance s ON r.person_id = s.contribution
