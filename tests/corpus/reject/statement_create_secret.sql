-- reason: NOT_A_SELECT
-- why: only SELECT statements are analyzed
CREATE SECRET s (TYPE s3, KEY_ID 'x')
