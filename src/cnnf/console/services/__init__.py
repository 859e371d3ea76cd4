"""The Console's logic: policy store, users and tokens, audits and flows.

Services take a SQLAlchemy session and plain models; they know nothing of HTTP.
Each mutating call is one transaction: it commits when it returns and rolls
back, leaving nothing changed, when it raises.
"""
