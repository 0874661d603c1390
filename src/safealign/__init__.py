"""safealign: safety alignment with decoupled helpfulness and harmlessness preferences."""

__version__ = "0.1.0"
