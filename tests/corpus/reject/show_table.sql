-- reason: UNSUPPORTED_CONSTRUCT
-- why: parses as SELECT over SHOW_REF
SHOW residents
