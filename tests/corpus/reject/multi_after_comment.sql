-- reason: MULTIPLE_STATEMENTS
-- why: a comment ends at the newline
SELECT COUNT(*) FROM residents -- x
; COPY residents TO '/tmp/x.csv'
