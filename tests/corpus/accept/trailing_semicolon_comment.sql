-- why: one statement followed by a comment
SELECT COUNT(*) FROM residents; -- x
