-- reason: UNSUPPORTED_CONSTRUCT
-- why: DISTINCT ON
SELECT DISTINCT ON (sex) sex, income FROM residents
