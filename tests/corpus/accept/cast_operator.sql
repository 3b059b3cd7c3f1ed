-- why: :: runs as TRY_CAST
SELECT COUNT(*) FROM residents WHERE income::VARCHAR = '5'
