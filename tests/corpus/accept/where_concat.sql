-- why: CONCAT
SELECT COUNT(*) FROM residents WHERE concat(sex, '-', region) = 'F-110000'
