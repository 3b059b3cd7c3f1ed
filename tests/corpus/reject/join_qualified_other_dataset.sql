-- reason: UNSUPPORTED_CONSTRUCT
-- why: schema-qualified names to reach another dataset
SELECT COUNT(*) FROM residents r JOIN enterprises.enterprises e ON r.region = e.region
