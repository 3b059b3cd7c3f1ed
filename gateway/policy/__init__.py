"""The operator's policy: organisations, members, roles, purposes, grants of every product, periods."""
