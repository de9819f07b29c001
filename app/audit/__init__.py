"""The audit trail (issue 27): who used whose face data, when, with what outcome.

events.py: what one event holds, the request's draft of it, the chain's hash.
trail.py: writing events (in a write's transaction, or group-committed for reads),
sealing them into the hash chain, verifying, querying, exporting and pruning it.
"""
