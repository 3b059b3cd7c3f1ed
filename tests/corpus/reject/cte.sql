-- reason: UNSUPPORTED_CONSTRUCT
-- why: CTE
WITH r AS (SELECT * FROM residents) SELECT COUNT(*) FROM residents
