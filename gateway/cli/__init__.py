"""`pgw`: the command line for consumers, operators, data owners and auditors."""
