"""`make bench`: the worker's overhead, token and call counts, the command ledger's cost, pacing, cold start and
memory, measured on loopback."""
