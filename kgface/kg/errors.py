"""Errors of the knowledge layer. Each message is one line naming the file, row or key and what to do."""


class KGError(Exception):
    """Base class: a knowledge-graph input the user can fix."""


class KGFormatError(KGError):
    """A source file is missing, truncated or not in the expected format."""


class UnknownDiseaseError(KGError, KeyError):
    """A disease id or name that the knowledge graph does not hold."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NoVisiblePhenotypeError(KGError):
    """A disease whose profile holds no phenotype a face photograph can show."""
