-- why: MIN over integer bounds
SELECT MIN(birth_year) FROM residents
