-- why: alias without AS
SELECT COUNT(*) n FROM residents
