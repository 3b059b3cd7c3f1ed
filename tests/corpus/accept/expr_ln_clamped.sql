-- why: LN clamped to bounds
SELECT AVG(CLAMP(LN(income + 1), 0, 20)) FROM residents
