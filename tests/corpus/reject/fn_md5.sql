-- reason: UNSUPPORTED_FUNCTION
-- why: hashes are not allowlisted
SELECT COUNT(*) FROM residents WHERE md5(sex) = 'x'
