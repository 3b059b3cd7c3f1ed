-- why: table names act as qualifiers
SELECT SUM(social_insurance.contribution) FROM residents JOIN social_insurance ON residents.person_id = social_insurance.person_id
