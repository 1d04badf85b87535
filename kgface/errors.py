"""User-facing errors of kgface outside the knowledge layer (which has its own, kgface.kg.errors)."""


class UserError(Exception):
    """Bad input or settings a user can fix: the entry points print it as one line and exit with status 2."""


class RunError(UserError):
    """A run directory that is not (or not completely) a kgface.train output."""
