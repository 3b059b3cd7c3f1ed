-- reason: UNSUPPORTED_CONSTRUCT
-- why: time travel
SELECT COUNT(*) FROM residents AT (VERSION => 1)
