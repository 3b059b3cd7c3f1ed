-- why: IN literal list
SELECT COUNT(*) FROM residents WHERE region IN ('110000', '310000')
