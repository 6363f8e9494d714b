"""Packaging glue that pyproject.toml cannot express.

``kernels/`` is a top-level folder of the repository without an ``__init__.py``; ``upo_fast/kernels`` is a symlink
to it, so it is installed (wheel) and imported (editable, source tree) as the subpackage ``upo_fast.kernels``.
Why not ``package_dir={"upo_fast.kernels": "kernels"}``: setuptools' editable finder cannot import a namespace
subpackage mapped that way (pypa/setuptools#4943), and with an ``__init__.py`` the folder would shadow the PyPI
package ``kernels`` (which transformers >= 5.25 imports) for every Python started in the repository root. A
namespace portion never wins over an installed regular package. CONTRIBUTING.md, "Layout", says more.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["upo_fast", "upo_fast.*"]) + ["upo_fast.kernels"],
    package_data={"upo_fast.assets": [f"{folder}*.{ext}" for folder in ("*/", "*/*/")
                                       for ext in ("json", "safetensors", "md", "jsonl", "png")],
                  "upo_fast.training": ["presets/*.yaml"],
                  "upo_fast.integrations.lm_eval_tasks": ["*/*.yaml"]},  # lm-eval task folders (--include_path)
)
