"""Misbehaving handlers, oversized records and bad configuration, as an operator meets them."""
