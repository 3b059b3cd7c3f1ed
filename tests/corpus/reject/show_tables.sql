-- reason: UNSUPPORTED_CONSTRUCT
-- why: lists tables
SHOW TABLES
