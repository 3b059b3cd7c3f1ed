"""Budgets: the governor (every level of a charge), the durable ledger, the data owner's settings, alerts."""
