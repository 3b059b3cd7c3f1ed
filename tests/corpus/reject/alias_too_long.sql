-- reason: INVALID_ALIAS
-- why: alias over 64 characters
SELECT COUNT(*) AS aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa FROM residents
