-- reason: SQL_PARSE_FAILED
-- why: fullwidth letters are not keywords
ＳＥＬＥＣＴ COUNT(*) FROM residents
