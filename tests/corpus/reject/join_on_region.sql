-- reason: JOIN_NOT_ON_PRIVACY_UNIT
-- why: joining private tables on a non-unit key pairs many units
SELECT COUNT(*) FROM residents r JOIN social_insurance s ON r.region = s.region
