"""The credits ledger's storage: the only place with SQL.

`ledger` holds the write transaction (two round trips: lock and read, then write and commit) and
the discovery reads it needs; `reads` holds the single-statement reads of the API, the audit
verifier and the sweeper.
"""
