-- reason: BARE_COLUMN
-- why: an output expression that is not the key
SELECT lower(sex), COUNT(*) FROM residents GROUP BY upper(sex)
