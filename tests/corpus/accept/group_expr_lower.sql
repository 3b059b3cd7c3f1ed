-- why: expression over a string domain
SELECT LOWER(sex) AS s, COUNT(*) FROM residents GROUP BY LOWER(sex)
