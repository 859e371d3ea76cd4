"""The Console's logic: policy store, users and tokens, audits and flows.

Services take a SQLAlchemy session and plain models; they know nothing of HTTP.
Each mutating call is one transaction: it commits when it returns and rolls
back, leaving nothing changed, when it raises.
"""

from sqlalchemy.orm import Session


def commit(session: Session) -> None:
    """Commit, or roll back and re-raise: the one way a service ends its transaction."""
    try:
        session.commit()
    except BaseException:
        session.rollback()
        raise
