-- why: parenthesised key list is a plain GROUP BY
SELECT sex, region, COUNT(*) FROM residents GROUP BY (sex, region)
