-- why: expression key not selected
SELECT COUNT(*) FROM residents GROUP BY UPPER(sex)
