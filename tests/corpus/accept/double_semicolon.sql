-- why: empty statements are dropped by the parser
SELECT COUNT(*) FROM residents;;
