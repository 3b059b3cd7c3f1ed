-- why: STDDEV_SAMP
SELECT STDDEV_SAMP(income) FROM residents
