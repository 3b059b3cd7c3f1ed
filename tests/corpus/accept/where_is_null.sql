-- why: IS NULL
SELECT COUNT(*) FROM residents WHERE income IS NULL
