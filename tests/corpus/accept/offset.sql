-- why: OFFSET is post-processing
SELECT COUNT(*) FROM residents OFFSET 1
