-- reason: JOIN_KEY_NOT_UNIQUE
-- why: macro_region is not unique in regions: one private row would match many
SELECT COUNT(*) FROM residents r JOIN regions g ON r.region = g.macro_region
