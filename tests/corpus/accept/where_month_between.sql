-- why: string BETWEEN
SELECT SUM(contribution) FROM social_insurance WHERE month BETWEEN '2025-01' AND '2025-06'
