-- reason: UNSUPPORTED_FUNCTION
-- why: GLOB
SELECT COUNT(*) FROM residents WHERE sex GLOB 'F*'
