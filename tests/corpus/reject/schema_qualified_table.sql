-- reason: UNSUPPORTED_CONSTRUCT
-- why: schema qualifiers are not accepted
SELECT COUNT(*) FROM main.residents
