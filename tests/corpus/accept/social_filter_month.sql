-- why: string comparison
SELECT COUNT(*) FROM social_insurance WHERE month >= '2025-07'
