"""Privacy-preserving query gateway: differentially private SQL over data that stays with its owner."""

__version__ = "0.1.0"
