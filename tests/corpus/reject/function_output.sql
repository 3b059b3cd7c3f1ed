-- reason: BARE_COLUMN
-- why: upper(sex) is not the GROUP BY key sex
SELECT upper(sex), COUNT(*) FROM residents GROUP BY sex
