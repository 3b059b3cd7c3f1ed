-- why: unary minus
SELECT SUM(-income) FROM residents
