-- reason: UNKNOWN_COLUMN
-- why: not in the catalog
SELECT COUNT(*) FROM residents WHERE age > 30
