-- reason: SUBQUERY_NOT_ON_PRIVACY_UNIT
-- why: IN over a non-unit column filters on other units' values
SELECT COUNT(*) FROM residents WHERE income IN (SELECT contribution FROM social_insurance)
