-- why: LENGTH
SELECT COUNT(*) FROM residents WHERE length(sex) = 1
