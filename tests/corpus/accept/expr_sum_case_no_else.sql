-- why: CASE without ELSE is NULL, skipped by SUM
SELECT SUM(CASE WHEN sex = 'F' THEN income END) FROM residents
