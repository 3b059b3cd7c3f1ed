-- why: a statement inside a comment is only a comment
SELECT COUNT(*) FROM residents /* ; DROP TABLE residents */
