"""`make bench`: the worker's overhead, token and call counts, pacing, cold start and memory, measured on loopback."""
