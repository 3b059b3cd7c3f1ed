-- why: boolean literal
SELECT COUNT(*) FROM residents WHERE employed = TRUE
