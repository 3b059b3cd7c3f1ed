-- why: leading block comment
/* hello */ SELECT COUNT(*) FROM residents
