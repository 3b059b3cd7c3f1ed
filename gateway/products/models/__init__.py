"""The model product: DP linear and logistic regression, trained and evaluated in the sandbox."""
