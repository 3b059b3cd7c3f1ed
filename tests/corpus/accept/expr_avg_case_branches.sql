-- why: CASE hull of branches
SELECT AVG(CASE WHEN employed THEN income ELSE 0 END) FROM residents
