-- reason: SELECT_STAR
-- why: FROM-first without SELECT means SELECT *
FROM residents
