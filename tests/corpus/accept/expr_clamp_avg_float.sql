-- why: CLAMP with decimal bounds
SELECT AVG(CLAMP(income / 3.0, 0.5, 1000.5)) FROM residents
