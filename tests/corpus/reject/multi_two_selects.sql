-- reason: MULTIPLE_STATEMENTS
-- why: two releases for one charge
SELECT COUNT(*) FROM residents; SELECT COUNT(*) FROM residents
