-- why: number of people
SELECT COUNT(DISTINCT person_id) FROM residents
