"""Fault scenarios under load against the real stack (`make chaos`); see chaos/__main__.py."""
