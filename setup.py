"""Packaging glue that pyproject.toml cannot express: the top-level ``kernels/`` folder is installed as the
subpackage ``upo_fast.kernels`` (never ``import kernels``: a PyPI package of that name exists)."""

from setuptools import setup

setup(
    packages=["upo_fast", "upo_fast.models", "upo_fast.tasks", "upo_fast.training", "upo_fast.kernels",
              "upo_fast.assets"],
    package_dir={"upo_fast": "upo_fast", "upo_fast.kernels": "kernels"},
    package_data={"upo_fast.assets": [f"{folder}*.{ext}" for folder in ("*/", "*/*/")
                                       for ext in ("json", "safetensors", "md", "jsonl", "png")],
                  "upo_fast.training": ["presets/*.yaml"]},
)
