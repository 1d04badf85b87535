"""kgface: knowledge-graph-conditioned medical face generation."""
__version__ = "0.1.0"
