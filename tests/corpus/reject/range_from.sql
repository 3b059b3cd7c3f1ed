-- reason: TABLE_FUNCTION
-- why: range() generates rows
SELECT COUNT(*) FROM range(1000000)
