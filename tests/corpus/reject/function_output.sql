-- reason: UNSUPPORTED_EXPRESSION
-- why: scalar functions come later
SELECT upper(sex), COUNT(*) FROM residents GROUP BY sex
