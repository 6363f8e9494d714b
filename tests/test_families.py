"""The family tables: every family's facts on one frozen object (``families.FAMILIES``, ``loading.NATIVE``), every
fact set, unknown names refused, and no code outside the tables that tests a family's name."""

import ast
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from upo_fast.models.loading import NATIVE, SUPPORTED, NativeFamily
from upo_fast.sampling.adapters import MDMAdapter
from upo_fast.sampling.families import FALLBACK, FAMILIES, LLADA_MASK_ID, ModelFamily, detect_family, get_family

ROOT = Path(__file__).resolve().parents[1]
NAMES = set(FAMILIES)


def bare_model(**config) -> nn.Module:
    """A module with only a ``config``: no head, no blocks (what the facts say about it is all the adapter has)."""
    model = nn.Linear(2, 2)
    model.config = SimpleNamespace(**config)
    return model


def test_every_family_has_every_fact_set():
    assert list(FAMILIES) == ["llada", "dream", "tiny_mdm", "generic"]  # policy checkpoints store these names
    for name, family in FAMILIES.items():
        assert isinstance(family, ModelFamily) and family.name == name
        assert family.model_type is None or (family.model_type == family.model_type.lower() and family.model_type)
        assert family.mask_id is None or isinstance(family.mask_id, int)
        for paths in (family.mask_id_from, family.block_paths, family.head_paths):
            assert isinstance(paths, tuple) and paths and all(isinstance(p, str) and p for p in paths), name
        assert family.head_module is None or isinstance(family.head_module, str)
        assert isinstance(family.title, str) and family.title.lower() == name.replace("_", "")
        for flag in (family.model_type_prefix, family.shift_logits, family.head_from_output_embeddings,
                     family.scales_logits):
            assert isinstance(flag, bool), name
        valid = torch.tensor([[False, True, True], [True, True, True]])
        padded = family.attention(valid.long(), valid)
        assert isinstance(family.attention(None, None), dict) and isinstance(padded, dict)
        assert set(family.positional) <= set(padded), f"{name}: positional arguments its attention never builds"
    with pytest.raises(dataclasses.FrozenInstanceError):
        FAMILIES["dream"].shift_logits = False


def test_each_drop_in_reproduces_one_family():
    """The drop-in a family names is a public function, and no two families name the same one (the drop-in picks
    its family by it)."""
    import upo_fast

    dropins = [family.dropin for family in FAMILIES.values() if family.dropin is not None]
    assert sorted(dropins) == ["dream_generate", "llada_generate"] and len(set(dropins)) == len(dropins)
    assert all(callable(getattr(upo_fast, name)) for name in dropins)
    assert FAMILIES[FALLBACK].dropin is None


def test_detection_and_the_fallback():
    assert [n for n, f in FAMILIES.items() if f.model_type is None] == [FALLBACK] == ["generic"]
    for name, family in FAMILIES.items():
        if family.model_type is not None:
            assert detect_family(bare_model(model_type=family.model_type.upper())) == name
    assert detect_family(bare_model(model_type="llada_moe")) == "llada"  # a prefix for the remote-code variants
    assert detect_family(bare_model(model_type="tiny_mdm_v2")) == "generic"  # exact for TinyMDM
    assert detect_family(nn.Linear(2, 2)) == "generic"
    # the generic family looks for blocks wherever a known family keeps them
    known = {p for f in FAMILIES.values() if f.model_type is not None for p in f.block_paths}
    assert known <= set(FAMILIES["generic"].block_paths)


@pytest.mark.parametrize("name", ["gpt", "Dream", None, 3])
def test_an_unknown_family_is_a_value_error_naming_the_valid_ones(name):
    if name is not None:
        with pytest.raises(ValueError, match=r"family must be one of \('llada', 'dream', 'tiny_mdm', 'generic'\)"):
            get_family(name)
    with pytest.raises(ValueError, match="family must be one of .*'generic'"):
        MDMAdapter(bare_model(mask_token_id=1), family=name or "")


def test_default_mask_id_rule():
    """A recorded id wins; 0 counts as unset only where the family has an official id to fall back to."""
    assert MDMAdapter(bare_model(model_type="llada", mask_token_id=7)).mask_id == 7
    assert MDMAdapter(bare_model(model_type="llada", mask_token_id=0)).mask_id == LLADA_MASK_ID
    assert MDMAdapter(bare_model(model_type="tiny_mdm", mask_token_id=0)).mask_id == 0
    dream = bare_model(model_type="Dream", mask_token_id=5)
    dream.generation_config = SimpleNamespace(mask_token_id=None)
    assert MDMAdapter(dream).mask_id == 5
    with pytest.raises(ValueError, match="mask_id is required for a generic model whose config has no mask_token_id"):
        MDMAdapter(bare_model(model_type="my_mdm"))


def test_the_recorded_mask_id_names_where_it_was_found():
    dream = bare_model(model_type="Dream", mask_token_id=5)
    dream.generation_config = SimpleNamespace(mask_token_id=9)
    assert FAMILIES["dream"].recorded_mask_id(dream) == ("generation_config.mask_token_id", 9)
    dream.generation_config.mask_token_id = None
    assert FAMILIES["dream"].recorded_mask_id(dream) == ("config.mask_token_id", 5)
    assert FAMILIES["llada"].recorded_mask_id(bare_model(mask_token_id=0)) is None  # 0 is unset where 126336 exists
    assert FAMILIES["llada"].default_mask_id(bare_model(mask_token_id=0)) == LLADA_MASK_ID
    assert FAMILIES["tiny_mdm"].recorded_mask_id(bare_model(mask_token_id=0)) == ("config.mask_token_id", 0)


def test_native_table_matches_the_adapters_table():
    assert SUPPORTED == ("llada", "Dream", "tiny_mdm")  # named in load_model's error for other model types
    for model_type, native in NATIVE.items():
        assert isinstance(native, NativeFamily) and model_type == native.model_type.lower()
        assert native.name in FAMILIES
        assert detect_family(bare_model(model_type=native.model_type)) == native.name  # the adapter agrees
        assert (native.classes is None) != (native.load_folder is None), native.name  # exactly one way to load
        assert native.tied_head is None or native.classes is not None


def _family_name_literals(path: Path, tables: set[str]) -> list[str]:
    """``file:line 'name'`` for each string constant that is a family's name (any case) outside the assignment of
    one of ``tables``: comparing with it, looking it up or returning it is deciding by the family's name."""
    found = []
    for statement in ast.parse(path.read_text()).body:
        targets = statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
        if isinstance(statement, (ast.Assign, ast.AnnAssign)) and any(getattr(t, "id", None) in tables
                                                                          for t in targets):
            continue
        for node in ast.walk(statement):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in NAMES:
                found.append(f"{path.name}:{node.lineno} {node.value!r}")
    return found


def test_no_family_name_is_tested_outside_the_tables():
    sources = {ROOT / "upo_fast" / "sampling" / "adapters.py": {"FAMILIES"},
               ROOT / "upo_fast" / "models" / "loading.py": {"NATIVE"}}
    found = [hit for path, tables in sources.items() for hit in _family_name_literals(path, tables)]
    assert found == [], f"decide by the family object's facts, not its name: {found}"


def test_the_name_check_finds_a_comparison(tmp_path):
    source = tmp_path / "example.py"
    source.write_text('FAMILIES = {"dream": 1}\n\ndef f(adapter):\n    return adapter.family == "dream"\n')
    assert _family_name_literals(source, {"FAMILIES"}) == ["example.py:4 'dream'"]
