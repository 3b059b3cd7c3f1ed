-- why: unary minus
SELECT COUNT(*) FROM residents WHERE -income < -100
