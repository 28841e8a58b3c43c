"""mrrn: Multi-Level Recurrent Residual Networks, as a two-stage feature-cache pipeline."""

__version__ = "0.3.0"
