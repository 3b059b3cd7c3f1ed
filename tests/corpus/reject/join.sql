-- reason: UNSUPPORTED_CONSTRUCT
-- why: joins multiply rows
SELECT COUNT(*) FROM residents r JOIN social_insurance s ON r.person_id = s.person_id
