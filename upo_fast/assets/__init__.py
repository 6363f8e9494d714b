"""Shipped small artifacts: trained TinyMDM checkpoints (and later policies), one folder per task."""
