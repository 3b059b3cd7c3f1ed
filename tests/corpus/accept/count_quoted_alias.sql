-- why: a quoted alias that is a valid name
SELECT COUNT(*) AS "n_total" FROM residents
