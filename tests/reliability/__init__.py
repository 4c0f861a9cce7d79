"""Misbehaving handlers, oversized records and bad configuration, run the way an operator
meets them."""
