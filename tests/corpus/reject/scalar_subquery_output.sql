-- reason: SCALAR_SUBQUERY
-- why: folds one row into an output
SELECT COUNT(*) + (SELECT income FROM residents WHERE person_id = 1) FROM residents
