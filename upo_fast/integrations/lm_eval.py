"""An lm-evaluation-harness model, registered as ``upo_fast``: LLaDA, Dream or a TinyMDM with a tokenizer, sampled
by ``upo_fast.generate`` with any unmasking order (a learned policy included) and scored by LLaDA's Monte-Carlo
likelihood estimate (``upo_fast.sampling.likelihood``).

    upo-fast lm-eval --model upo_fast --model_args pretrained=DIR,scorer=margin,gen_length=256,steps=256 \\
        --tasks gsm8k --batch_size 8 --output_path OUT

``model_args`` are the fields of :class:`HarnessOptions`. Like LLaDA's own harness model, generation uses the
model arguments' length and sampler options; of a task's ``gen_kwargs`` only ``until`` (the stop strings) is used.
``sort_by_length=false,stop_at_eos=false`` batch the prompts in lm-eval's order and read all the generated text,
as ``upo-fast eval`` does: with eval's ``batch_size`` the shipped task ``arith`` (``TASKS_DIR`` is its
``--include_path``) then gives eval's answers (``upo_fast.integrations.lm_eval_tasks.ARITH_MODEL_ARGS``).
``threshold=``, ``factor=`` (at most one) and ``cache=prefix|dual`` are Fast-dLLM's parallel-unmasking rules and KV
caches, as ``upo_fast.generate`` takes them: ``...,cache=dual,threshold=0.9`` samples as Fast-dLLM's dual-cache
generator does, in any unmasking order (LLaDA and Dream only: a TinyMDM has no KV cache).
Data parallel runs under ``torchrun`` / ``accelerate launch`` (one process per GPU, gloo on CPU): lm-eval shards the
requests by ``rank`` and gathers the results through :mod:`upo_fast.training.distributed`.

``device``, ``batch_size`` and ``max_batch_size`` reach the model twice: in ``model_args`` and as lm-eval's own
options (``--device``, ``--batch_size``; lm-eval's command line passes its defaults, ``cuda:0`` and 1, when they are
not typed). ``model_args`` wins, with a warning when a value the user gave lm-eval differs; a default the user never
typed is dropped without one, and lm-eval's default ``cuda:0`` on a machine without CUDA runs on the CPU with a
warning (see :func:`model_arguments`).

Needs the optional extra: ``pip install -e ".[eval]"`` (``lm-eval >= 0.4``).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import torch

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError('upo_fast.integrations.lm_eval needs lm-evaluation-harness: pip install -e ".[eval]"') from err
from tqdm.auto import tqdm

from upo_fast.integrations.lm_eval_generate import generate_texts, request_seed, stop_token_ids
from upo_fast.integrations.lm_eval_tasks import TASKS_DIR  # noqa: F401 - the --include_path of the shipped tasks
from upo_fast.training.distributed import ProcessGroup
from upo_fast.validation import check_device, options_from_dict

DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
LM_EVAL_OPTIONS = ("device", "batch_size", "max_batch_size")  # what lm-eval passes every model beside model_args
SHORT_FLAGS = {"batch_size": "-b"}  # lm-eval's one-letter spellings of those options
# the HarnessOptions fields that are upo_fast.sampling.loop.SamplingOptions fields of the same name
SAMPLING_OPTIONS = ("scorer", "temperature", "cfg_scale", "threshold", "factor", "cache", "topk",
                    "position_temperature")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HarnessOptions:
    """``--model_args`` of the ``upo_fast`` lm-eval model (and ``--batch_size``, ``--device``)."""

    pretrained: str  # a local LLaDA, Dream or TinyMDM folder with its tokenizer
    dtype: str = "auto"  # auto = bfloat16 on CUDA, float32 on the CPU
    device: str | None = None  # default: cuda when there is one (cuda:LOCAL_RANK under torchrun), else cpu;
    # also lm-eval's --device, which model_args' device overrides (see model_arguments)
    attn: str = "auto"
    trust_remote_code: bool = False
    batch_size: int = 8  # prompts per generate call; rows per Monte-Carlo batch of a likelihood
    sort_by_length: bool = True  # generate_until batches longest prompts first; false: in lm-eval's (the
    # documents') order, as `upo-fast eval` batches its problems (a LLaDA answer depends on its batch's padding)
    stop_at_eos: bool = True  # an answer ends at its first EOS / end-of-turn token; false: every generated token
    # but the special ones is the answer, as `upo-fast eval` and the arith training reward read it
    # sampling (upo_fast.generate)
    scorer: str = "max_confidence"
    policy: str | None = None  # a saved UnmaskingPolicy folder, for scorer=policy
    gen_length: int = 256
    block_length: int = 32
    steps: int | None = None  # MDM forwards per answer (default gen_length)
    temperature: float = 0.0
    position_temperature: float = 0.0  # a policy's order temperature (0 = greedy)
    topk: int = 5
    cfg_scale: float = 0.0
    threshold: float | None = None  # parallel unmasking: Fast-dLLM's threshold rule (steps ignored)
    factor: float | None = None  # parallel unmasking: Fast-dLLM's factor rule (steps ignored); not with threshold
    cache: str | None = None  # None, prefix or dual: Fast-dLLM's KV caches (LLaDA / Dream, cfg_scale=0)
    mask_id: int | None = None
    max_length: int | None = None  # prompt + answer; longer prompts lose their left end (default: the model's)
    add_bos_token: bool | None = None  # None: the tokenizer's default, off once a chat template was applied
    seed: int = 1234
    # likelihoods (upo_fast.sampling.likelihood)
    mc_num: int = 128
    cfg: float = 0.0
    check_greedy: bool = False  # lm-eval's is_greedy (LLaDA's harness recommends off: it unmasks every target)

    @classmethod
    def from_model_args(cls, values: dict) -> HarnessOptions:
        values = {k: v for k, v in values.items() if k != "max_batch_size"}  # lm-eval passes it to every model
        if "pretrained" not in values:
            raise ValueError("model_args needs pretrained=DIR (a local LLaDA, Dream or TinyMDM folder)")
        if values.get("batch_size") in ("auto",) or str(values.get("batch_size", "")).startswith("auto:"):
            raise ValueError("batch_size must be an integer for the upo_fast model (no 'auto')")
        return options_from_dict(cls, values, "model_args")


@register_model("upo_fast")
class UpoFastLM(LM):
    """lm-eval model: see the module docstring and :class:`HarnessOptions`."""

    # lm-eval builds every model through one of these two, with its own device / batch_size as `additional_config`
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> UpoFastLM:
        from lm_eval.utils import simple_parse_args_string

        return cls(**model_arguments(simple_parse_args_string(arg_string), additional_config))

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> UpoFastLM:
        return cls(**model_arguments(arg_dict, additional_config))

    def __init__(self, **model_args):
        super().__init__()
        from upo_fast.models.loading import load_model, load_tokenizer
        from upo_fast.sampling.adapters import wrap_model

        self.options = opts = HarnessOptions.from_model_args(model_args)
        sampling = self._sampling_options()  # a bad sampler option fails here, before the model loads
        device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
        check_device(device, "device")
        self.group = ProcessGroup.from_env(device)
        if torch.device(device).type == "cuda" and self.group.world > 1:
            device = f"cuda:{self.group.local_rank}"
        self._rank, self._world_size, self._device = self.group.rank, self.group.world, torch.device(device)
        if self.group.world > 1:  # older lm-eval versions gather through `lm.accelerator` (accelerate's API)
            self.accelerator = _Accelerator(self.group)
        if opts.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {opts.dtype!r}")
        dtype = DTYPES[opts.dtype] or (torch.bfloat16 if self._device.type == "cuda" else torch.float32)
        self.model = load_model(opts.pretrained, dtype=dtype, device=self._device, attn=opts.attn,
                                trust_remote_code=opts.trust_remote_code)
        self.tokenizer = load_tokenizer(opts.pretrained, trust_remote_code=opts.trust_remote_code)
        self.adapter = wrap_model(self.model, mask_id=opts.mask_id)
        if opts.cache is not None:
            self._check_cache()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # LLaDA's recipe: left padding with EOS
        self.stop_ids = stop_token_ids(self.tokenizer, self.model)
        self.policy = self._load_policy()
        self.sampler = self._generate_kwargs(sampling)
        self.chat_template_applied = False

    def _check_cache(self) -> None:
        """What ``generate`` checks for ``cache=``, done once here rather than at the first ``generate_until`` batch:
        a LLaDA / Dream from remote code gets its native twin (kept beside the model; ``generate`` reuses it), and a
        model with no KV cache (a TinyMDM, another family) raises ``generate``'s own error."""
        cached = self.adapter.with_cache()
        if not cached.native:
            cached.allocate_cache(1, 1)  # raises: no KV cache in this model

    def _load_policy(self):
        from upo_fast.sampling.scorers import get_scorer

        if not get_scorer(self.options.scorer).needs_policy:
            return None
        if not self.options.policy:
            raise ValueError("scorer=policy needs policy=DIR (a saved UnmaskingPolicy folder)")
        from upo_fast.policy import load_policy

        return load_policy(self.options.policy, None, self.model)

    def _sampling_options(self):
        """The sampling options of ``model_args``, checked once here as ``upo_fast.generate`` checks them
        (``upo_fast.sampling.loop.SamplingOptions``: numbers in range, the scorer's canonical name, at most one of
        threshold / factor, ``cache`` None, prefix or dual and not with cfg_scale > 0)."""
        from upo_fast.sampling.loop import SamplingOptions

        o = self.options
        return SamplingOptions(**{name: getattr(o, name) for name in SAMPLING_OPTIONS})

    def _generate_kwargs(self, sampling) -> dict:
        """The keyword arguments of ``upo_fast.generate``: the schedule, the policy and the ``SAMPLING_OPTIONS`` as
        ``sampling`` checked them. Named one by one, not ``dataclasses.asdict``: that would also pass the fields
        the harness never sets, and turn a ``commit`` rule (a dataclass) into a dict."""
        o = self.options
        return dict(gen_length=o.gen_length, block_length=o.block_length, steps=o.steps or o.gen_length,
                    policy=self.policy, **{name: getattr(sampling, name) for name in SAMPLING_OPTIONS})

    # ---- what lm-eval reads -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def max_length(self) -> int:
        if self.options.max_length is not None:
            return self.options.max_length
        config = self.model.config
        for name in ("max_sequence_length", "max_position_embeddings"):
            if isinstance(getattr(config, name, None), int):
                return getattr(config, name)
        return 4096

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", self.options.pretrained).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or "" if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        self.chat_template_applied = True  # the template holds the special tokens: do not add them again
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.group.all_gather(tensor)

    def gather_object(self, obj, dst: int = 0):
        return self.group.gather_object(obj, dst)

    def barrier(self) -> None:
        self.group.barrier()

    # ---- requests ---------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        add = self.options.add_bos_token
        add = (not self.chat_template_applied) if add is None else add
        return self.tokenizer(text, add_special_tokens=add)["input_ids"]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        return generate_texts(self, [req.args for req in requests], progress=not disable_tqdm and self.group.main)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        from upo_fast.sampling.likelihood import greedy_reproduces, mc_loglikelihood

        o, out = self.options, []
        for req in tqdm(requests, desc="upo_fast loglikelihood", disable=disable_tqdm or not self.group.main):
            context, continuation = req.args[0], req.args[1]
            prefix, target = self.encode_pair(context, continuation)
            generator = torch.Generator().manual_seed(request_seed(o.seed, context, continuation))
            ll = mc_loglikelihood(self.adapter, prefix, target, mc_num=o.mc_num, batch_size=o.batch_size,
                                  cfg_scale=o.cfg, generator=generator)
            greedy = o.check_greedy and greedy_reproduces(self.adapter, prefix, target, cfg_scale=o.cfg)
            out.append((ll, bool(greedy)))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), out[-1])
        return out

    def encode_pair(self, context: str, continuation: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids of (context, continuation) as lm-eval's models split them: trailing spaces of the context
        move to the continuation, and the continuation is what the whole text adds to the context's tokens."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, prefix = self.encode(context + continuation), self.encode(context)
        if not whole[len(prefix):]:
            raise ValueError(f"the continuation {continuation!r} adds no token to its context")
        return torch.tensor(prefix, dtype=torch.long), torch.tensor(whole[len(prefix):], dtype=torch.long)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "loglikelihood_rolling (perplexity tasks such as wikitext) is not implemented for masked diffusion "
            "models, as in LLaDA's harness: use generate_until tasks (gsm8k, math500, ...) or loglikelihood / "
            "multiple-choice tasks (mc_num samples of LLaDA's likelihood estimate)")


def model_arguments(model_args: dict, lm_eval_options: dict | None) -> dict:
    """The constructor's keyword arguments from ``model_args`` and lm-eval's own options (``device``,
    ``batch_size``, ``max_batch_size``; None = not given), which lm-eval would otherwise pass twice.

    - Given in both: ``model_args`` wins (it is the model's own, more specific setting), with a warning naming both
      values when they differ, unless lm-eval's value is a default the user never typed.
    - lm-eval's device only: the user's ``--device`` is checked here, so that a bad one is a one-line ValueError
      naming ``--device``. A default they never typed is dropped: the model takes its own (cuda when there is CUDA,
      else cpu). Why not an error: lm-eval's reference model (``hf``) does the same, so ``lm-eval --model hf
      --model_args pretrained=gpt2`` runs on a laptop without ``--device``, and a user expects ``upo_fast`` to as
      well; the warning says how to choose the CPU explicitly.
    """
    merged = dict(model_args)
    command_line = _lm_eval_command_line()
    for key, value in (lm_eval_options or {}).items():
        if value is None:
            continue
        untyped = _untyped_default(key, value, command_line)
        name = f"--{key}" if command_line is not None else f"lm-eval's {key}"
        if key in model_args:
            if str(value) != str(model_args[key]) and not untyped:
                logger.warning("model_args %s=%s and %s=%s differ: using model_args' %s=%s", key, model_args[key],
                               name, value, key, model_args[key])
            continue
        if key == "device" and untyped:
            if str(value).startswith("cuda") and not torch.cuda.is_available():
                logger.warning("CUDA is not available on this machine: running on cpu instead of lm-eval's default "
                               "device %s (pass --device cpu to choose it)", value)
            continue
        if key == "device":
            check_device(value, name)
        merged[key] = value
    if model_args.get("device") is not None:
        check_device(model_args["device"], "model_args device")
    return merged


def _lm_eval_command_line() -> list[str] | None:
    """The arguments of lm-eval's command line when this process runs it (``lm-eval``, ``python -m lm_eval``,
    ``upo-fast lm-eval``, which names itself ``lm-eval`` in ``sys.argv``); None in a program that calls
    ``lm_eval.simple_evaluate``, whose options are all the caller's."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if program is None:
        return None
    if program.stem in ("lm-eval", "lm_eval") or (program.name == "__main__.py" and program.parent.name == "lm_eval"):
        return sys.argv[1:]
    return None


def _untyped_default(key: str, value, command_line: list[str] | None) -> bool:
    """Whether lm-eval's command line passed ``key=value`` as its own default, the option not being on it.
    (A ``--config`` YAML that sets the default value itself reads as the default too.)"""
    if command_line is None or str(value) != str(_lm_eval_defaults().get(key)):
        return False
    flag, short = f"--{key}", SHORT_FLAGS.get(key)
    for token in command_line:
        if token == "--":
            break
        name = token.split("=", 1)[0]
        if len(name) > 2 and name.startswith("--") and flag.startswith(name):  # argparse takes unique prefixes
            return False
        if short and token.startswith(short) and not token.startswith("--"):
            return False
    return True


def _lm_eval_defaults() -> dict:
    """lm-eval's command-line defaults of ``LM_EVAL_OPTIONS``: its EvaluatorConfig's (device cuda:0, batch size 1
    in 0.4.13); versions without one passed no device unless typed, and batch size 1."""
    try:
        from lm_eval.config.evaluate_config import EvaluatorConfig
    except ImportError:
        return {"batch_size": 1}
    return {f.name: f.default for f in fields(EvaluatorConfig) if f.name in LM_EVAL_OPTIONS}


class _Accelerator:
    """The two ``accelerate.Accelerator`` methods older lm-eval versions call on ``lm.accelerator``."""

    def __init__(self, group: ProcessGroup):
        self.group = group

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.group.all_gather(tensor)

    def wait_for_everyone(self) -> None:
        self.group.barrier()
