-- why: the semicolon is inside a comment
SELECT COUNT(*) FROM residents WHERE income > 1 -- ; DROP TABLE x
