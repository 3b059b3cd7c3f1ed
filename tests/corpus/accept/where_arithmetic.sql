-- why: arithmetic on columns and literals
SELECT COUNT(*) FROM residents WHERE income * 12 + 5 > 100000
