-- reason: UNSUPPORTED_FUNCTION
-- why: volatile time
SELECT COUNT(*) FROM residents WHERE birth_year < year(now())
