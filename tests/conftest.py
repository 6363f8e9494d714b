import os
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run through triton's interpreter, which must be switched on before triton is
# first imported (loading a transformers model imports it), so here, before any test module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# tests import their fixtures (tiny_models, reference_samplers) as plain modules
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sudoku4_mdm_dir(tmp_path_factory) -> str:
    """A saved random 4x4-Sudoku TinyMDM (one layer, width 32): what the CLI, trainer and run-folder tests load."""
    from upo_fast.models import TinyMDM, TinyMDMConfig

    torch.manual_seed(0)
    config = TinyMDMConfig(vocab_size=6, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=16, position_embedding="grid", grid_size=4,
                           mask_token_id=5, pad_token_id=0)
    path = tmp_path_factory.mktemp("sudoku4_mdm")
    TinyMDM(config).save_pretrained(path)
    return str(path)


@pytest.fixture
def lm_eval_offline(monkeypatch, tmp_path):
    """lm-eval runs offline from the repository root (the task YAMLs name their JSONL relative to it), with a
    datasets cache of its own."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
