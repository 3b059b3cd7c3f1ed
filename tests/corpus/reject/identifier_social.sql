-- reason: IDENTIFIER_COLUMN
-- why: identifier in another table
SELECT COUNT(*) FROM social_insurance WHERE employer_credit_code = '91110000'
