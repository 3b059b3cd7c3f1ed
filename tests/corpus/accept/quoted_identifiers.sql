-- why: quoted identifiers
SELECT "sex", COUNT(*) FROM "residents" GROUP BY "sex"
