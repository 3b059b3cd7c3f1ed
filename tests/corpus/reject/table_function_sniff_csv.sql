-- reason: TABLE_FUNCTION
-- why: sniff_csv() reads outside the catalog or multiplies rows
SELECT COUNT(*) FROM sniff_csv('/etc/passwd')
