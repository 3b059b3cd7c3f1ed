-- why: digit separators
SELECT COUNT(*) FROM residents WHERE income > 1_000
