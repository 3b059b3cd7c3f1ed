-- why: VAR_SAMP
SELECT VAR_SAMP(income) FROM residents
