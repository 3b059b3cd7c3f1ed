-- reason: SELECT_STAR
-- why: releases rows
SELECT r.* FROM residents r
