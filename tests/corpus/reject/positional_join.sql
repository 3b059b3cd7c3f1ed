-- reason: UNSUPPORTED_JOIN
-- why: join
SELECT COUNT(*) FROM residents POSITIONAL JOIN social_insurance
