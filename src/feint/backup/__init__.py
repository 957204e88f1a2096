"""Encrypted, verified backups of the database (`feint backup …`); see docs/operations.md, Backups."""
