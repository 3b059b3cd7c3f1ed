-- reason: DUPLICATE_OUTPUT_NAME
-- why: both are named count
SELECT COUNT(*), COUNT(*) FROM residents
