"""Misbehaving handlers, oversized records and bad configuration.

Each case runs the way an operator meets it.
"""
