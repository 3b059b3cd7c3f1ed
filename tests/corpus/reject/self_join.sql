-- reason: SELF_JOIN
-- why: self join multiplies rows
SELECT COUNT(*) FROM residents a JOIN residents b ON a.sex = b.sex
