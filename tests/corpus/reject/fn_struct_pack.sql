-- reason: UNSUPPORTED_EXPRESSION
-- why: struct literal
SELECT COUNT(*) FROM residents WHERE struct_pack(a := income) IS NULL
