"""Pricing, pure: the OpenDP measurements behind every release, zCDP, quantiles, models, caps, periods."""
