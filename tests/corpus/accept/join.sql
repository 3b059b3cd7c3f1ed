-- why: INNER equi-join on the privacy unit; K = 1 x 12
SELECT COUNT(*) FROM residents r JOIN social_insurance s ON r.person_id = s.person_id
