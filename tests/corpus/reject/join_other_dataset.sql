-- reason: UNKNOWN_TABLE
-- why: tables of another dataset are not visible
SELECT COUNT(*) FROM residents r JOIN enterprises e ON r.person_id = e.credit_code
