-- why: QUANTILE_DISC
SELECT QUANTILE_DISC(birth_year, 0.25) FROM residents
