-- why: always unknown, but harmless
SELECT COUNT(*) FROM residents WHERE income = NULL
