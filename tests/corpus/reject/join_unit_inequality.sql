-- reason: JOIN_NOT_ON_PRIVACY_UNIT
-- why: inequality on the unit pairs different units
SELECT COUNT(*) FROM residents r JOIN social_insurance s ON r.person_id < s.person_id
