-- reason: UNSUPPORTED_CONSTRUCT
-- why: would leak min/max/quantiles
SUMMARIZE residents
