-- reason: UNSUPPORTED_CONSTRUCT
-- why: grand-total grouping set
SELECT COUNT(*) FROM residents GROUP BY ()
