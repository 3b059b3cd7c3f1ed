-- why: output order is free
SELECT COUNT(*), sex FROM residents GROUP BY sex
