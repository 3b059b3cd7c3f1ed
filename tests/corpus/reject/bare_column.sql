-- reason: BARE_COLUMN
-- why: releases rows
SELECT income FROM residents
