-- why: ^ with a small integer literal exponent is POWER
SELECT COUNT(*) FROM residents WHERE income ^ 2 > 10
