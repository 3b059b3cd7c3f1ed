-- why: LIMIT is post-processing
SELECT COUNT(*) FROM residents LIMIT 1
