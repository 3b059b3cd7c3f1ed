-- why: <>
SELECT COUNT(*) FROM residents WHERE sex <> 'F'
