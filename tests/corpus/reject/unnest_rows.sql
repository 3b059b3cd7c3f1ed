-- reason: TABLE_FUNCTION
-- why: unnest/range multiply rows
SELECT COUNT(*) FROM residents r JOIN range(10) x ON true
