-- why: TRIM and UPPER
SELECT COUNT(*) FROM residents WHERE upper(trim(sex)) = 'F'
