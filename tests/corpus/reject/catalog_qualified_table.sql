-- reason: UNSUPPORTED_CONSTRUCT
-- why: catalog qualifiers could reach another database
SELECT COUNT(*) FROM other_db.main.residents
