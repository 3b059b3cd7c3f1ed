-- why: negative literal (folded by the parser)
SELECT COUNT(*) FROM residents WHERE income > - 5
