-- why: STDDEV_POP per group
SELECT sex, STDDEV_POP(income) FROM residents GROUP BY sex
