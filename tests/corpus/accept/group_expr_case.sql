-- why: CASE over a domain column
SELECT CASE WHEN region IN ('110000', '310000') THEN 'city' ELSE 'other' END AS kind, COUNT(*) FROM residents GROUP BY CASE WHEN region IN ('110000', '310000') THEN 'city' ELSE 'other' END
