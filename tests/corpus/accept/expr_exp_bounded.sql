-- why: EXP of a bounded argument
SELECT AVG(EXP(CLAMP(income / 1000000.0, 0, 2))) FROM residents
