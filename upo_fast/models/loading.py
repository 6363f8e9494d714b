"""``load_model`` / ``load_tokenizer``: a local folder in the hub's layout → a model the samplers take.

LLaDA and Dream folders build this project's own implementations (``models/llada.py``, ``models/dream.py``) and
read the official checkpoints' safetensors directly, under any transformers from 4.46 to 5.x; no code from the
folder is executed. TinyMDM folders load as TinyMDM. Any other model goes through ``AutoModel`` and only with
``trust_remote_code=True``. Nothing is downloaded: a path must be an existing local folder. What differs between
the families that load natively is one ``NativeFamily`` each in ``NATIVE``: ``load_model`` asks it, never a name.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from upo_fast.validation import check_device, one_line

# dtype strings as torch, config.json and lm-eval's model_args (dtype=...) spell them; "auto" is resolved per folder
DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
               "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
               "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
               "float64": torch.float64, "double": torch.float64}
_STORED_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _corrupt(file: str, exc: BaseException) -> ValueError:
    return ValueError(f"{file}: corrupt or truncated safetensors file ({one_line(exc)}); copy it from the checkpoint "
                      "again")


def _open_safetensors(file: str):
    """``safe_open(file)``; a file whose header does not parse (corrupt, truncated, not safetensors: the header
    is checked against the file's size) is a ValueError naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(file, framework="pt")
    except (OSError, SafetensorError) as exc:
        raise _corrupt(file, exc) from exc


def _local_folder(path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a local folder (str or os.PathLike), got {type(path).__name__}")
    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise ValueError(f"path={folder!r} is not an existing local folder (upo_fast never downloads models: "
                         "pass the folder that holds config.json and the safetensors)")
    return folder


def read_config(folder: str) -> dict:
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        raise ValueError(f"{config_file}: missing (a model folder holds config.json and its safetensors)")
    try:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{config_file}: unreadable ({one_line(exc)})") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{config_file}: expected a JSON object")
    return config


def weight_files(folder: str) -> dict[str, str]:
    """{parameter name: safetensors file} from the index of a sharded checkpoint or the single file."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{index}: unreadable index ({one_line(exc)})") from exc
        files = {name: os.path.join(folder, os.path.basename(shard)) for name, shard in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not os.path.isfile(shard):
                raise ValueError(f"{shard}: listed in {index} but missing")
        return files
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        with _open_safetensors(single) as f:
            return {name: single for name in f.keys()}
    pickles = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json")
               if os.path.exists(os.path.join(folder, n))]
    hint = f" ({pickles[0]} is a pickle file, which upo_fast never loads: convert it to safetensors)" if pickles else ""
    raise ValueError(f"{folder}: no model.safetensors or model.safetensors.index.json{hint}")


def _read_state(model: torch.nn.Module, files: dict[str, str], dtype, device, skip: set[str]) -> dict:
    """The checkpoint's tensors, converted to ``dtype`` on ``device``, after checking names and shapes."""
    from safetensors import SafetensorError

    expected = {name: p.shape for name, p in model.state_dict().items() if name not in skip}
    missing = sorted(set(expected) - set(files))
    unexpected = sorted(set(files) - set(expected) - skip)
    if missing or unexpected:
        raise ValueError(f"{os.path.dirname(next(iter(files.values()), '.'))}: weights do not match config.json: "
                         f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}, unexpected "
                         f"{unexpected[:5]}{'…' if len(unexpected) > 5 else ''}")
    state = {}
    by_file: dict[str, list[str]] = {}
    for name in expected:
        by_file.setdefault(files[name], []).append(name)
    for file, names in by_file.items():
        with _open_safetensors(file) as f:
            absent = sorted(set(names) - set(f.keys()))
            if absent:  # a sharded checkpoint's index names another shard than the one holding the tensor
                raise ValueError(f"{file}: has no tensor {absent[0]} (model.safetensors.index.json lists it there)")
            for name in names:
                try:
                    tensor = f.get_tensor(name)
                except (OSError, SafetensorError) as exc:
                    raise _corrupt(file, exc) from exc
                if tuple(tensor.shape) != tuple(expected[name]):
                    raise ValueError(f"{file}: parameter {name} has shape {tuple(tensor.shape)}, config.json "
                                     f"implies {tuple(expected[name])}")
                state[name] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
    return state


def _dtype_choice(dtype):
    """``dtype`` as a floating torch.dtype, or "auto" (resolved by :func:`_auto_dtype` once config.json is read)."""
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key == "auto" or key in DTYPE_NAMES:
            return DTYPE_NAMES.get(key, "auto")
    raise ValueError(f"dtype must be a floating torch.dtype (e.g. torch.bfloat16) or one of "
                     f"{', '.join(('auto', *DTYPE_NAMES))}, got {dtype!r}")


def _auto_dtype(folder: str, config: dict) -> torch.dtype:
    """What transformers' ``from_pretrained(torch_dtype="auto")`` (and so lm-eval's ``dtype=auto``) loads: the dtype
    config.json names (``dtype``, ``torch_dtype`` before transformers 5), else that of the checkpoint's first
    floating tensor, else float32."""
    named = config.get("dtype") or config.get("torch_dtype")
    if isinstance(named, str) and named.lower().removeprefix("torch.") in DTYPE_NAMES:
        return DTYPE_NAMES[named.lower().removeprefix("torch.")]
    for file in dict.fromkeys(weight_files(folder).values()):
        with _open_safetensors(file) as f:
            for name in f.keys():
                stored = _STORED_DTYPES.get(f.get_slice(name).get_dtype())
                if stored is not None:
                    return stored
    return torch.float32


def _build_native(family: NativeFamily, config_dict: dict):
    config_cls, model_cls = family.classes()
    fields = {k: v for k, v in config_dict.items() if k not in ("model_type", "auto_map", "architectures")}
    config = config_cls(**fields)
    with torch.device("meta"):
        return model_cls(config)


def _dream_generation_config(folder: str, config):
    from transformers import GenerationConfig

    file = os.path.join(folder, "generation_config.json")
    if os.path.isfile(file):
        try:
            with open(file, encoding="utf-8") as f:
                return GenerationConfig(**json.load(f))
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"{file}: unreadable ({one_line(exc)})") from exc
    # Dream's remote code refuses a folder without this file; its only field the samplers need is the mask id
    return GenerationConfig(mask_token_id=config.mask_token_id, pad_token_id=config.pad_token_id,
                            bos_token_id=getattr(config, "bos_token_id", None),
                            eos_token_id=getattr(config, "eos_token_id", None))


def _llada_classes():
    from upo_fast.models.llada import LLaDAConfig, LLaDAModelLM

    return LLaDAConfig, LLaDAModelLM


def _dream_classes():
    from upo_fast.models.dream import DreamConfig, DreamModel

    return DreamConfig, DreamModel


def _load_tiny_mdm(folder: str, device):
    from upo_fast.models.tiny_mdm import load_tiny_mdm

    return load_tiny_mdm(folder, device=device)


@dataclass(frozen=True)
class NativeFamily:
    """How a folder of one family loads without running the folder's code (``load_model``).

    ``name``: the family's name, as in ``upo_fast.sampling.families.FAMILIES`` (the adapter that then runs it;
    tests/test_families.py keeps the two tables' names in step). ``model_type``: config.json's ``model_type`` as the
    official checkpoints spell it (matched lower-cased). ``classes``: () -> (config class, model class) of this
    project's implementation, imported on first use, whose parameters are read from the safetensors; None when
    ``load_folder`` reads the folder in its own format instead. ``load_folder``: (folder, device) -> model.
    ``tied_head``: the head parameter that a checkpoint with ``tie_word_embeddings`` leaves out (tied after
    loading); None where the tied form has no head parameter at all (LLaDA's ``weight_tying``).
    ``generation_config``: the model gets a ``generation_config`` (Dream's samplers read the mask id there).
    """

    name: str
    model_type: str
    classes: Callable[[], tuple[type, type]] | None
    load_folder: Callable[[str, torch.device], torch.nn.Module] | None
    tied_head: str | None
    generation_config: bool


def _entries(*families: NativeFamily) -> dict[str, NativeFamily]:
    return {family.model_type.lower(): family for family in families}


# keyed by the lower-cased model_type (config.json spells Dream's "Dream"), what load_model looks up
NATIVE: dict[str, NativeFamily] = _entries(
    NativeFamily("llada", "llada", classes=_llada_classes, load_folder=None, tied_head=None, generation_config=False),
    NativeFamily("dream", "Dream", classes=_dream_classes, load_folder=None, tied_head="lm_head.weight",
                 generation_config=True),
    NativeFamily("tiny_mdm", "tiny_mdm", classes=None, load_folder=_load_tiny_mdm, tied_head=None,
                 generation_config=False),
)
SUPPORTED = tuple(family.model_type for family in NATIVE.values())


def load_model(path, *, dtype: torch.dtype | str = torch.bfloat16, device=None, attn: str = "auto",
               trust_remote_code: bool = False):
    """Load the MDM in a local folder (config.json + safetensors, sharded or single) in eval mode.

    Args:
        path: a local folder; nothing is downloaded.
        dtype: parameter dtype (the checkpoint's tensors are converted while reading): a floating torch.dtype, or
            its name as torch, config.json or lm-eval write it ("bfloat16"/"bf16", "float16"/"fp16"/"half",
            "float32"/"fp32"/"float", "float64"/"double"), or "auto": as transformers' ``torch_dtype="auto"``
            and lm-eval's HFLM, the dtype config.json names (``torch_dtype``/``dtype``), else the checkpoint's
            stored dtype.
        device: where the parameters go (None = CPU): cpu, cuda, cuda:N or mps, present on this machine.
        attn: "auto" (flash-attn on CUDA when installed, else SDPA), "sdpa", "eager" or "flash"; native models only.
        trust_remote_code: only for folders that are neither LLaDA, Dream nor TinyMDM (runs the folder's code).
    """
    from upo_fast.models.attention import ATTENTION_BACKENDS

    folder = _local_folder(path)
    if attn not in ATTENTION_BACKENDS:
        raise ValueError(f"attn must be one of {ATTENTION_BACKENDS}, got {attn!r}")
    dtype = _dtype_choice(dtype)
    if device is not None:
        check_device(device, "device")
    device = torch.device(device) if device is not None else torch.device("cpu")
    config_dict = read_config(folder)
    model_type = str(config_dict.get("model_type", ""))
    family = NATIVE.get(model_type.lower())
    if family is None:  # transformers reads dtype="auto" itself
        return _load_with_remote_code(folder, model_type, dtype, device, trust_remote_code)
    if dtype == "auto":
        dtype = _auto_dtype(folder, config_dict)
    if family.load_folder is not None:
        return family.load_folder(folder, device).to(dtype)
    model = _build_native(family, config_dict)
    tied = family.tied_head is not None and bool(model.config.tie_word_embeddings)
    state = _read_state(model, weight_files(folder), dtype, device, skip={family.tied_head} if tied else set())
    model.load_state_dict(state, strict=not tied, assign=True)
    if tied:
        model.tie_weights()
    if family.generation_config:
        model.generation_config = _dream_generation_config(folder, model.config)
    model.set_attention_backend(attn)
    return model.eval().requires_grad_(False)


def _check_remote_code_allowed(folder: str, model_type: str, trust_remote_code: bool) -> None:
    if model_type.lower() not in NATIVE and not trust_remote_code:
        raise ValueError(f"{folder}: config.json has model_type={model_type!r}; upo_fast loads {SUPPORTED} natively. "
                         "For another masked diffusion model pass trust_remote_code=True (this runs the folder's "
                         "own Python code) and mask_id= to the samplers")


def _load_with_remote_code(folder: str, model_type: str, dtype, device, trust_remote_code: bool):
    _check_remote_code_allowed(folder, model_type, trust_remote_code)
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder, trust_remote_code=True, local_files_only=True, torch_dtype=dtype)
    return model.to(device).eval().requires_grad_(False)


def load_tokenizer(path, *, padding_side: str = "left", trust_remote_code: bool = False):
    """The tokenizer of a local model folder, left-padding by default (what batched sampling needs).

    Dream's folders name a custom ``DreamTokenizer`` (remote code); without ``trust_remote_code`` its
    ``tokenizer.json`` is loaded as a fast tokenizer instead, with the special tokens of tokenizer_config.json.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = _local_folder(path)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not trust_remote_code:  # the folder's own code may read other files
        _check_tokenizer_files(folder)
    fast_file = os.path.join(folder, "tokenizer.json")
    # tokenizers raises a bare Exception for a tokenizer.json it cannot parse: every failure here is the folder's
    with _quiet_transformers():  # it reads config.json as a generic config and warns that the types differ
        try:
            return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code,
                                                 padding_side=padding_side)
        except Exception as exc:
            if trust_remote_code or not os.path.isfile(fast_file):
                raise ValueError(f"tokenizer: {folder}: no tokenizer could be loaded ({type(exc).__name__}: "
                                 f"{one_line(exc)})") from exc
        try:
            return PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True, padding_side=padding_side)
        except Exception as exc:
            raise ValueError(f"tokenizer: {fast_file}: unreadable ({type(exc).__name__}: {one_line(exc)}); copy it "
                             "from the checkpoint again") from exc


def _check_tokenizer_files(folder: str) -> None:
    """A folder without a vocabulary (tokenizer.json, or a slow tokenizer's vocab.json / vocab.txt / *.model /
    *.tiktoken) is refused by name; transformers would answer with a paragraph about sentencepiece."""
    names = os.listdir(folder)
    if not any(n in ("tokenizer.json", "vocab.json", "vocab.txt") or n.endswith((".model", ".tiktoken"))
               for n in names):
        raise ValueError(f"tokenizer: {folder} has no tokenizer files (tokenizer.json, or tokenizer_config.json "
                         "with its vocabulary: vocab.json + merges.txt, vocab.txt or tokenizer.model); copy them "
                         "from the checkpoint")


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)


def load_text_model(path, device, trust_remote_code: bool = False):
    """(model, tokenizer) for the CLI's text commands: bf16 on CUDA, fp32 on the CPU. The tokenizer loads first, so
    that a folder without one is refused before the (long) weight read."""
    check_device(device, "device")
    device = torch.device(device)
    folder = _local_folder(path)
    _check_remote_code_allowed(folder, str(read_config(folder).get("model_type", "")), trust_remote_code)
    tokenizer = load_tokenizer(folder, trust_remote_code=trust_remote_code)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return load_model(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code), tokenizer
