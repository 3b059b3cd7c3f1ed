-- why: column against column
SELECT COUNT(*) FROM residents WHERE income > birth_year
