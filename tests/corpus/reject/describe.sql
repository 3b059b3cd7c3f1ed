-- reason: UNSUPPORTED_CONSTRUCT
-- why: parses as SELECT over SHOW_REF
DESCRIBE residents
