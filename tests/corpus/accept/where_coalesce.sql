-- why: COALESCE in a filter
SELECT COUNT(*) FROM residents WHERE COALESCE(income, 0) > 0
