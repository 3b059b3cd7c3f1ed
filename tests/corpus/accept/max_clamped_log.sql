-- why: MAX over an expression made bounded with CLAMP: the extreme quantile over [0, 15]
SELECT MAX(CLAMP(LN(income), 0, 15)) AS top FROM residents
