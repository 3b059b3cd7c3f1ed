-- reason: UNSUPPORTED_CONSTRUCT
-- why: UNPIVOT releases rows
UNPIVOT residents ON sex INTO NAME k VALUE v
