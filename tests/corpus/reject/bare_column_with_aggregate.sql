-- reason: BARE_COLUMN
-- why: sex is not grouped
SELECT sex, COUNT(*) FROM residents
