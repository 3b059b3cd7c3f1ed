-- why: a boolean cast to INTEGER
SELECT SUM(CAST(employed AS INTEGER)) FROM residents
