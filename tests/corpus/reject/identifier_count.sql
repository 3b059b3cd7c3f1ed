-- reason: IDENTIFIER_COLUMN
-- why: identifiers never appear
SELECT COUNT(id_number) FROM residents
