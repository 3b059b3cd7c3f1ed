-- reason: UNSUPPORTED_CONSTRUCT
-- why: sampling
SELECT COUNT(*) FROM residents TABLESAMPLE 10%
