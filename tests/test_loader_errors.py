"""Bad model folders and bad load options, through the API (``upo_fast.load_model`` / ``load_tokenizer``) and the
CLI (``upo-fast sample --model DIR --prompt ...``, ``upo-fast eval --task gsm8k --model DIR ...``): a one-line
ValueError naming the file, folder or argument and what would be valid (exit code 2 on the command line)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import upo_fast
from upo_fast.cli.commands import main

OFFICIAL = Path(__file__).parent / "fixtures" / "official"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def copy_of(name, tmp_path):
    target = tmp_path / name
    shutil.copytree(OFFICIAL / name, target)
    return target


def truncate(file: Path, keep: int) -> None:
    file.write_bytes(file.read_bytes()[:keep])


def one_line_value_error(call, *names):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for name in names:
        assert str(name) in message, (name, message)
    return message


def cli_error(capsys, *argv, names=()):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def cli_sample_and_eval(capsys, folder, tmp_path, *names):
    """The same one-line error from ``sample --prompt`` and ``eval --task gsm8k``."""
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(json.dumps({"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}) + "\n")
    cli_error(capsys, "sample", "--model", folder, "--prompt", "hi", "--device", "cpu", "--steps", 2,
              "--gen-length", 4, "--block-length", 4, names=names)
    cli_error(capsys, "eval", "--task", "gsm8k", "--model", folder, "--data", data, "--limit", 1, "--gen-length", 4,
              "--block-length", 4, "--steps", 2, names=names)


# ------------------------------------------------------------------------------------------------------------
# corrupt, truncated and missing safetensors
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [4, 100, "half", "all but 10"])
def test_a_truncated_model_safetensors_is_named(tmp_path, keep):
    folder = copy_of("dream", tmp_path)
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    truncate(weights, {"half": size // 2, "all but 10": size - 10}.get(keep, keep))
    message = one_line_value_error(lambda: upo_fast.load_model(folder), weights,
                                   "corrupt or truncated safetensors file")
    assert message.startswith(f"{weights}: ")


def test_garbage_and_truncated_shards_are_named(tmp_path, capsys):
    folder = copy_of("llada_tied", tmp_path)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    one_line_value_error(lambda: upo_fast.load_model(folder), folder / "model.safetensors", "corrupt")
    cli_sample_and_eval(capsys, folder, tmp_path, folder / "model.safetensors", "corrupt or truncated")
    sharded = copy_of("llada_untied", tmp_path)
    shard = sharded / "model-00002-of-00003.safetensors"
    truncate(shard, 50)
    one_line_value_error(lambda: upo_fast.load_model(sharded), shard, "corrupt or truncated")
    cli_sample_and_eval(capsys, sharded, tmp_path, shard, "corrupt or truncated")


def test_a_shard_missing_or_without_its_tensors_is_named(tmp_path, capsys):
    folder = copy_of("llada_untied", tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    name, shard = next(iter(index["weight_map"].items()))
    state = load_file(str(folder / shard))
    save_file({k: v for k, v in state.items() if k != name}, str(folder / shard), metadata={"format": "pt"})
    one_line_value_error(lambda: upo_fast.load_model(folder), folder / shard, f"has no tensor {name}",
                         "model.safetensors.index.json")
    (folder / "model-00003-of-00003.safetensors").unlink()
    cli_sample_and_eval(capsys, folder, tmp_path, "model-00003-of-00003.safetensors: listed in")


# ------------------------------------------------------------------------------------------------------------
# tokenizer files
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llada_tied", "dream"])
@pytest.mark.parametrize("removed", [TOKENIZER_FILES, ("tokenizer.json",)], ids=["all", "vocabulary"])
def test_a_folder_without_tokenizer_files_is_named(tmp_path, family, removed):
    folder = copy_of(family, tmp_path)
    for name in removed:
        (folder / name).unlink()
    message = one_line_value_error(lambda: upo_fast.load_tokenizer(folder), folder, "has no tokenizer files",
                                   "tokenizer.json", "copy them from the checkpoint")
    assert message.startswith(f"tokenizer: {folder} ")


@pytest.mark.parametrize("family", ["llada_tied", "dream"])
def test_a_corrupt_tokenizer_json_is_named(tmp_path, capsys, family):
    folder = copy_of(family, tmp_path)
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": 3}')
    one_line_value_error(lambda: upo_fast.load_tokenizer(folder), folder / "tokenizer.json", "unreadable")
    cli_error(capsys, "sample", "--model", folder, "--prompt", "hi", "--device", "cpu",
              names=[folder / "tokenizer.json", "unreadable"])


def test_the_cli_refuses_a_folder_without_tokenizer_before_reading_weights(tmp_path, capsys, monkeypatch):
    folder = copy_of("llada_tied", tmp_path)
    for name in TOKENIZER_FILES:
        (folder / name).unlink()
    loaded = []
    monkeypatch.setattr("upo_fast.models.loading.load_model", lambda *a, **k: loaded.append(a))
    cli_sample_and_eval(capsys, folder, tmp_path, folder, "has no tokenizer files")
    assert not loaded


# ------------------------------------------------------------------------------------------------------------
# device and dtype
# ------------------------------------------------------------------------------------------------------------


# ids without "gpu": conftest skips tests with that keyword on machines without CUDA
@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu:0"], ids=["word", "index", "other"])
def test_an_unknown_device_is_named_with_the_valid_forms(device):
    one_line_value_error(lambda: upo_fast.load_model(OFFICIAL / "dream", device=device),
                         f"device={device!r}", "cpu, cuda, cuda:N or mps")


def test_a_device_torch_does_not_run_on_is_named():
    one_line_value_error(lambda: upo_fast.load_model(OFFICIAL / "dream", device="meta"),
                         "device='meta'", "cpu, cuda, cuda:N or mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_cuda_device_is_named(tmp_path, capsys):
    for device in ("cuda", "cuda:0", torch.device("cuda")):
        one_line_value_error(lambda d=device: upo_fast.load_model(OFFICIAL / "dream", device=d),
                             "but this torch has no CUDA device", "use device='cpu'")
    cli_error(capsys, "sample", "--model", OFFICIAL / "dream", "--prompt", "hi", "--device", "cuda",
              names=["--device", "no CUDA device"])


@pytest.mark.parametrize("name, dtype", [("float32", torch.float32), ("fp32", torch.float32),
                                         ("float16", torch.float16), ("fp16", torch.float16),
                                         ("half", torch.float16), ("bfloat16", torch.bfloat16),
                                         ("BF16", torch.bfloat16), ("torch.bfloat16", torch.bfloat16)])
def test_dtype_strings(name, dtype):
    model = upo_fast.load_model(OFFICIAL / "llada_tied", dtype=name)
    assert {p.dtype for p in model.parameters()} == {dtype}


def _with_config(tmp_path, family, **fields):
    folder = copy_of(family, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config.pop("torch_dtype", None)
    config.update(fields)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_auto_dtype_is_the_checkpoints(tmp_path):
    """dtype="auto" as transformers' torch_dtype="auto" (lm-eval's HFLM dtype=auto): config.json's dtype, else the
    dtype the safetensors hold."""
    assert upo_fast.load_model(OFFICIAL / "dream", dtype="auto").lm_head.weight.dtype == torch.float32
    named = _with_config(tmp_path / "a", "dream", torch_dtype="bfloat16")
    assert upo_fast.load_model(named, dtype="auto").lm_head.weight.dtype == torch.bfloat16
    named = _with_config(tmp_path / "b", "dream", dtype="float16")  # transformers 5's name of the field
    assert upo_fast.load_model(named, dtype="auto").lm_head.weight.dtype == torch.float16
    unnamed = _with_config(tmp_path / "c", "llada_untied")
    for shard in unnamed.glob("*.safetensors"):
        save_file({k: v.half() for k, v in load_file(str(shard)).items()}, str(shard), metadata={"format": "pt"})
    assert {p.dtype for p in upo_fast.load_model(unnamed, dtype="auto").parameters()} == {torch.float16}


@pytest.mark.parametrize("dtype", ["float8", "int8", "fp", "", 16, None, torch.int64])
def test_an_unknown_dtype_lists_the_valid_ones(dtype):
    one_line_value_error(lambda: upo_fast.load_model(OFFICIAL / "dream", dtype=dtype), "dtype must be",
                         "auto, float32, fp32", "bfloat16, bf16", f"got {dtype!r}")
