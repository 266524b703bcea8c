"""The ledger's conformance vectors (PROTOCOL.md §16.6) and their generator."""
