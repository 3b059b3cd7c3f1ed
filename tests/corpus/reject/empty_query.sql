-- reason: SQL_PARSE_FAILED
-- why: no statement
-- nothing here

