-- why: unit join; K = 1 x 12, AVG over joined rows
SELECT AVG(s.contribution) FROM residents r JOIN social_insurance s ON r.person_id = s.person_id
