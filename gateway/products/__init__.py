"""The products: what each computes and how it is priced (query, verification, models)."""
