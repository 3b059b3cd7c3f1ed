-- reason: TYPE_MISMATCH
-- why: mixed BETWEEN
SELECT COUNT(*) FROM residents WHERE birth_year BETWEEN '1950' AND 1960
