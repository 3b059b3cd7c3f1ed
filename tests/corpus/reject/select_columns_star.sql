-- reason: SELECT_STAR
-- why: releases rows
SELECT COLUMNS(*) FROM residents
