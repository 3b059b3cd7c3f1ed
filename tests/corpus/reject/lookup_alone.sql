-- reason: PUBLIC_TABLE_ALONE
-- why: a public table alone has no privacy unit
SELECT COUNT(*) FROM regions
