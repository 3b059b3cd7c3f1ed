-- reason: JOIN_NOT_ON_PRIVACY_UNIT
-- why: both sides from the same table
SELECT COUNT(*) FROM residents r JOIN social_insurance s ON r.person_id = r.person_id
