-- reason: UNSUPPORTED_CONSTRUCT
-- why: sampling
SELECT COUNT(*) FROM residents USING SAMPLE 10
