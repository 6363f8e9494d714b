"""``upo_fast.load_model`` / ``load_tokenizer`` on local folders: what loads, and every bad folder gets a
ValueError that names the file, the parameter or the option, never a silent random initialisation."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import upo_fast
from upo_fast.models.dream import DreamModel
from upo_fast.models.llada import LLaDAModelLM

OFFICIAL = Path(__file__).parent / "fixtures" / "official"


def copy_of(name, tmp_path):
    target = tmp_path / name
    shutil.copytree(OFFICIAL / name, target)
    return target


def test_loads_native_classes_in_the_requested_dtype():
    llada = upo_fast.load_model(OFFICIAL / "llada_untied")  # sharded, with its index
    dream = upo_fast.load_model(OFFICIAL / "dream", dtype=torch.float16)
    assert isinstance(llada, LLaDAModelLM) and isinstance(dream, DreamModel)
    assert {p.dtype for p in llada.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in dream.parameters()} == {torch.float16}
    assert not llada.training and not any(p.requires_grad for p in llada.parameters())
    assert dream.generation_config.mask_token_id == 317
    assert llada.attn_backend == "sdpa"  # "auto" on the CPU


def test_dream_without_generation_config_loads(tmp_path):
    folder = copy_of("dream", tmp_path)
    (folder / "generation_config.json").unlink()
    model = upo_fast.load_model(folder, dtype=torch.float32)
    assert model.generation_config.mask_token_id == model.config.mask_token_id == 317


def test_tokenizers_load_without_remote_code():
    llada = upo_fast.load_tokenizer(OFFICIAL / "llada_untied")
    dream = upo_fast.load_tokenizer(OFFICIAL / "dream")  # names DreamTokenizer (remote code): tokenizer.json is used
    for tok in (llada, dream):
        assert tok.padding_side == "left"
        ids = tok(["ab", "abcd"], padding=True, return_tensors="pt")
        assert ids.input_ids.shape == (2, 4) and ids.attention_mask[0, :2].sum() == 0
        assert tok.decode(ids.input_ids[1]).replace(" ", "") == "abcd"


@pytest.mark.parametrize("path", ["org/name", "/nonexistent/folder"])
def test_path_must_be_an_existing_local_folder(path):
    with pytest.raises(ValueError, match="not an existing local folder"):
        upo_fast.load_model(path)
    with pytest.raises(ValueError, match="not an existing local folder"):
        upo_fast.load_tokenizer(path)


def test_folder_without_config(tmp_path):
    with pytest.raises(ValueError, match="config.json: missing"):
        upo_fast.load_model(tmp_path)


def test_unknown_model_type_needs_trust_remote_code(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "my_mdm"}))
    with pytest.raises(ValueError, match=r"model_type='my_mdm'.*trust_remote_code=True"):
        upo_fast.load_model(tmp_path)


def test_pickle_weights_are_refused(tmp_path):
    folder = copy_of("llada_tied", tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle file, which upo_fast never loads"):
        upo_fast.load_model(folder)


def _rewrite(folder, edit):
    file = folder / "model.safetensors"
    state = load_file(str(file))
    edit(state)
    save_file(state, str(file))


def test_missing_parameter_is_named(tmp_path):
    folder = copy_of("dream", tmp_path)
    _rewrite(folder, lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing \['model.layers.1.mlp.up_proj.weight'\]"):
        upo_fast.load_model(folder)


def test_unexpected_parameter_is_named(tmp_path):
    folder = copy_of("llada_tied", tmp_path)
    _rewrite(folder, lambda s: s.update({"model.transformer.ff_out.weight": torch.zeros(300, 64)}))
    with pytest.raises(ValueError, match=r"unexpected \['model.transformer.ff_out.weight'\]"):
        upo_fast.load_model(folder)


def test_wrong_shape_is_named(tmp_path):
    folder = copy_of("dream", tmp_path)
    _rewrite(folder, lambda s: s.update({"lm_head.weight": s["lm_head.weight"][:-1].contiguous()}))
    with pytest.raises(ValueError, match=r"lm_head.weight has shape \(319, 64\)"):
        upo_fast.load_model(folder)


def test_shard_listed_in_the_index_but_missing(tmp_path):
    folder = copy_of("llada_untied", tmp_path)
    (folder / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(ValueError, match="model-00002-of-00003.safetensors: listed in"):
        upo_fast.load_model(folder)


def test_unsupported_llada_variant_is_named(tmp_path):
    folder = copy_of("llada_tied", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["block_type"] = "sequential"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="block_type='sequential'"):
        upo_fast.load_model(folder)


@pytest.mark.parametrize("kwargs, match", [(dict(attn="xformers"), "attn must be one of"),
                                           (dict(attn="flash"), "attn='flash' needs"),
                                           (dict(dtype=torch.int8), "dtype must be a floating")])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        upo_fast.load_model(OFFICIAL / "dream", **kwargs)
