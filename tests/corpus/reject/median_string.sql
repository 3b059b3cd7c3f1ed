-- reason: TYPE_MISMATCH
-- why: MEDIAN of a string
SELECT MEDIAN(LOWER(sex)) FROM residents
