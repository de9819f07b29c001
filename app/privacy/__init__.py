"""Privacy: the audit trail (events, trail, chain, spool), retention and consent (rules,
retention), erasure, the subject access export and key rotation. Its rules run inside
the gallery's transactions (app/gallery/unit.py); the use cases in app/service call it."""
