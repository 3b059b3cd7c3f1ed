-- why: IS NOT NULL
SELECT COUNT(*) FROM residents WHERE income IS NOT NULL
