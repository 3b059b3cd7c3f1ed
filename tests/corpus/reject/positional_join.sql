-- reason: UNSUPPORTED_CONSTRUCT
-- why: join
SELECT COUNT(*) FROM residents POSITIONAL JOIN social_insurance
