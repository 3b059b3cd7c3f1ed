-- reason: SELECT_STAR
-- why: releases rows
SELECT * EXCLUDE (name) FROM residents
