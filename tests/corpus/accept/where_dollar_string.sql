-- why: dollar-quoted literal
SELECT COUNT(*) FROM residents WHERE sex = $$F$$
