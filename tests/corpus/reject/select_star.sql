-- reason: SELECT_STAR
-- why: releases rows
SELECT * FROM residents
