-- why: || string concatenation
SELECT COUNT(*) FROM residents WHERE sex || 'x' = 'Fx'
