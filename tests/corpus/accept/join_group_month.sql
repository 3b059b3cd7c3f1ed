-- why: group by the right table's month domain
SELECT s.month, COUNT(*) FROM residents r JOIN social_insurance s ON r.person_id = s.person_id GROUP BY s.month
