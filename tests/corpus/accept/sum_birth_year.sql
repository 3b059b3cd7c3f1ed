-- why: public bounded column
SELECT SUM(birth_year) FROM residents
