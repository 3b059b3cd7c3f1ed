-- reason: UNSUPPORTED_CONSTRUCT
-- why: not a dataset table
VALUES (1), (2)
