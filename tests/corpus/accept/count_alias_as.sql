-- why: alias with AS
SELECT COUNT(*) AS n FROM residents
