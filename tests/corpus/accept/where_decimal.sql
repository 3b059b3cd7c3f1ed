-- why: decimal literal
SELECT COUNT(*) FROM residents WHERE income > 1234.5
