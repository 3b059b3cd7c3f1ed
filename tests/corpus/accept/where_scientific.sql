-- why: scientific notation
SELECT COUNT(*) FROM residents WHERE income > 1e5
