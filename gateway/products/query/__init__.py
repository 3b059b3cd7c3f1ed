"""The query product: SQL analysis, pricing, post-processing, the charge-once release cache."""
