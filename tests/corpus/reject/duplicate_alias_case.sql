-- reason: DUPLICATE_OUTPUT_NAME
-- why: names differ only in case
SELECT COUNT(*) AS n, SUM(income) AS N FROM residents
