"""Feint: self-hosted bot defence."""

__version__ = "0.1.0"
