-- why: SQRT guarded
SELECT AVG(SQRT(income)) FROM residents
