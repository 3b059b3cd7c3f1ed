-- reason: UNSUPPORTED_AGGREGATE
-- why: string_agg releases values
SELECT string_agg(sex, ',') FROM residents
