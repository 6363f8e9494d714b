"""The ``upo_fast`` lm-evaluation-harness model, run through lm-eval's own entry points on tiny checkpoints made by
the official LLaDA / Dream code (``tests/fixtures/official``, char-level tokenizers) and local task YAMLs over
JSONL files (``tests/data/lm_eval``): no download. Generations equal ``upo_fast.generate`` on the same prompts and
options, likelihoods equal ``upo_fast.mc_loglikelihood``, and two processes give what one gives."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason='lm-evaluation-harness is the optional extra: pip install -e ".[eval]"')

from upo_fast.cli.commands import main  # noqa: E402
from upo_fast.integrations.lm_eval import HarnessOptions, UpoFastLM  # noqa: E402
from upo_fast.integrations.lm_eval_generate import finish_text, left_pad, request_seed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT / "tests" / "fixtures" / "official"
TASKS = ROOT / "tests" / "data" / "lm_eval"
SMALL = dict(gen_length=16, block_length=8, steps=16, mc_num=8)


pytestmark = pytest.mark.usefixtures("lm_eval_offline")


def evaluate(pretrained, tasks, batch_size=1, **model_args):
    from lm_eval.tasks import TaskManager

    args = {"pretrained": str(pretrained), **SMALL, **model_args}
    return lm_eval.simple_evaluate(model="upo_fast", model_args=args, tasks=tasks, batch_size=batch_size,
                                   device="cpu", log_samples=True,
                                   task_manager=TaskManager(include_path=str(TASKS), include_defaults=False))


def direct_answers(lm, prompts, until, batch_size=1):
    """What ``upo_fast.generate`` answers to ``prompts`` with the model's options, ``batch_size`` at a time in
    the given order, cut as lm-eval's model cuts them."""
    from upo_fast import generate

    answers = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, mask = left_pad([lm.encode(p) for p in chunk], lm.tokenizer.pad_token_id)
        gen = torch.Generator().manual_seed(request_seed(lm.options.seed, *chunk))
        out = generate(lm.model, ids, mask, generator=gen, **lm.sampler)
        answers += [finish_text(lm.tokenizer, row[ids.shape[1]:].tolist(), lm.stop_ids, until) for row in out]
    return answers


@pytest.mark.parametrize("family, scorer", [("llada_untied", "max_confidence"), ("dream", "margin")])
def test_generate_until_equals_upo_fast_generate(family, scorer):
    results = evaluate(OFFICIAL / family, ["upo_fast_arith"], scorer=scorer)
    assert "exact_match,none" in results["results"]["upo_fast_arith"]
    samples = sorted(results["samples"]["upo_fast_arith"], key=lambda s: s["doc_id"])
    prompts = [s["arguments"][0][0] for s in samples]  # in memory: a list of request argument tuples
    assert prompts[0].startswith("Q: ") and prompts[0].endswith("\nA:")
    lm = UpoFastLM(pretrained=str(OFFICIAL / family), device="cpu", scorer=scorer, **SMALL)
    assert [s["resps"][0][0] for s in samples] == direct_answers(lm, prompts, ["\n", "Q:"])


@pytest.mark.parametrize("family, fast", [("llada_untied", dict(cache="dual", threshold=0.9)),
                                          ("dream", dict(cache="prefix", factor=1.0))])
def test_generate_until_with_fast_dllm_caches(family, fast):
    """model_args cache= (and a parallel rule) reach ``upo_fast.generate``: lm-eval's answers are its answers."""
    results = evaluate(OFFICIAL / family, ["upo_fast_arith"], batch_size=2, **fast)
    samples = sorted(results["samples"]["upo_fast_arith"], key=lambda s: s["doc_id"])
    lm = UpoFastLM(pretrained=str(OFFICIAL / family), device="cpu", batch_size=2, **SMALL, **fast)
    assert {k: lm.sampler[k] for k in fast} == fast and lm.sampler["steps"] == SMALL["steps"]
    answers = [s["resps"][0][0] for s in samples]
    assert all(isinstance(a, str) for a in answers) and any(answers)
    assert answers == direct_answers(lm, [s["arguments"][0][0] for s in samples], ["\n", "Q:"])


def test_cache_is_checked_once_before_the_model_loads():
    """A bad cache (or two parallel rules, or a cache with guidance) is one line naming it, raised before the model
    loads: a folder that does not exist is never reached (on the command line: test_cli_runs_lm_eval_...)."""
    for bad, names in [(dict(cache="bogus"), ["cache must be None, 'prefix' or 'dual'", "'bogus'"]),
                       (dict(cache="dual", cfg_scale=1.0), ["cache=", "cfg_scale=0"]),
                       (dict(threshold=0.9, factor=1.0), ["at most one of", "threshold and factor"])]:
        with pytest.raises(ValueError) as info:
            UpoFastLM(pretrained="nowhere", device="cpu", **bad)
        assert "\n" not in str(info.value) and all(name in str(info.value) for name in names), str(info.value)


def test_a_model_without_a_kv_cache_gets_generates_error(tmp_path):
    """A TinyMDM folder with a tokenizer loads (not natively: no KV cache); cache= is generate's error, at once."""
    from hub_folders import VOCAB, save_tokenizer, token_ids

    from upo_fast.integrations.lm_eval import SAMPLING_OPTIONS
    from upo_fast.models import TinyMDM, TinyMDMConfig

    config = TinyMDMConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=256,
                           mask_token_id=token_ids("llada")["mask_token"], pad_token_id=token_ids("llada")["eos_token"])
    TinyMDM(config).save_pretrained(tmp_path)
    save_tokenizer(tmp_path, "llada")
    with pytest.raises(ValueError, match="needs the KV cache of upo_fast's native LLaDA or Dream.*TinyMDM"):
        UpoFastLM(pretrained=str(tmp_path), device="cpu", cache="dual", **SMALL)
    lm = UpoFastLM(pretrained=str(tmp_path), device="cpu", threshold=0.9, **SMALL)
    # generate's keyword arguments, named one by one (no dataclass turned into a dict, no field the harness lacks)
    assert set(lm.sampler) == {"gen_length", "block_length", "steps", "policy", *SAMPLING_OPTIONS}
    assert lm.sampler["cache"] is None and lm.sampler["threshold"] == 0.9 and lm.sampler["position_temperature"] == 0
    assert lm.generate_until([_Request(("Q: 1+1\nA:", {"until": ["Q:"]}))], disable_tqdm=True)[0] is not None


def test_dream_batches_with_left_padding_give_the_unbatched_answers():
    prompts = ["Q: 1+1\nA:", "Q: 12+30\nA:", "Q: 7\nA:"]  # three lengths: the batch is left-padded
    lm = UpoFastLM(pretrained=str(OFFICIAL / "dream"), device="cpu", batch_size=3, **SMALL)
    batched = lm.generate_until([_Request((p, {"until": ["Q:"]})) for p in prompts], disable_tqdm=True)
    assert batched == direct_answers(lm, prompts, ["Q:"], batch_size=1)


def test_loglikelihood_equals_mc_loglikelihood():
    from upo_fast import mc_loglikelihood

    results = evaluate(OFFICIAL / "llada_untied", ["upo_fast_choice"], batch_size=4)
    assert "acc,none" in results["results"]["upo_fast_choice"]
    lm = UpoFastLM(pretrained=str(OFFICIAL / "llada_untied"), device="cpu", batch_size=4, **SMALL)
    for sample in results["samples"]["upo_fast_choice"]:
        for (context, continuation), response in zip(sample["arguments"], sample["resps"]):
            prefix, target = lm.encode_pair(context, continuation)
            gen = torch.Generator().manual_seed(request_seed(lm.options.seed, context, continuation))
            want = mc_loglikelihood(lm.model, prefix, target, mc_num=8, batch_size=4, generator=gen)
            assert response[0][0] == pytest.approx(want) and response[0][1] in (False, "False")


def test_cli_runs_lm_eval_with_every_option_passed_through(tmp_path, capsys):
    code = main(["lm-eval", "--model", "upo_fast", "--model_args",
                 f"pretrained={OFFICIAL / 'dream'},gen_length=16,block_length=8,steps=8,threshold=0.9",
                 "--tasks", "upo_fast_arith", "--include_path", str(TASKS), "--device", "cpu", "--batch_size", "2",
                 "--limit", "2", "--output_path", str(tmp_path / "out")])
    assert code == 0
    result_files = list((tmp_path / "out").rglob("results_*.json"))
    assert len(result_files) == 1
    report = json.loads(result_files[0].read_text())
    assert report["config"]["model"] == "upo_fast" and "upo_fast_arith" in report["results"]
    code = main(["lm-eval", "--model", "upo_fast", "--model_args", f"pretrained={OFFICIAL / 'dream'},stepz=8",
                 "--tasks", "upo_fast_arith", "--include_path", str(TASKS), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "unknown model_args stepz" in err[-1] and "Traceback" not in "\n".join(err)
    # (here rather than in a test of its own: lm-eval's command line leaves a log handler on this test's stderr)
    code = main(["lm-eval", "--model", "upo_fast", "--model_args", f"pretrained={OFFICIAL / 'dream'},cache=bogus",
                 "--tasks", "upo_fast_arith", "--include_path", str(TASKS), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "cache must be None, 'prefix' or 'dual'" in err[-1] and "Traceback" not in "\n".join(err)


def test_options_are_checked():
    with pytest.raises(ValueError, match="unknown model_args stepz"):
        HarnessOptions.from_model_args({"pretrained": "x", "stepz": 3})
    with pytest.raises(ValueError, match="pretrained"):
        HarnessOptions.from_model_args({"scorer": "margin"})
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        HarnessOptions.from_model_args({"pretrained": "x", "batch_size": "auto"})
    opts = HarnessOptions.from_model_args({"pretrained": "x", "threshold": "0.9", "check_greedy": "true",
                                           "steps": 64, "max_batch_size": None})
    assert opts.threshold == 0.9 and opts.check_greedy is True and opts.steps == 64
    with pytest.raises(ValueError, match="temperature"):
        UpoFastLM(pretrained=str(OFFICIAL / "dream"), device="cpu", temperature=-1)
    with pytest.raises(ValueError, match="policy=DIR"):
        UpoFastLM(pretrained=str(OFFICIAL / "dream"), device="cpu", scorer="policy")
    with pytest.raises(ValueError, match="not an existing local folder"):
        UpoFastLM(pretrained="org/name", device="cpu")


def test_answers_stop_at_end_tokens_and_stop_strings():
    lm = UpoFastLM(pretrained=str(OFFICIAL / "llada_untied"), device="cpu", **SMALL)
    tok = lm.tokenizer
    ids = tok("12 Q: x", add_special_tokens=False)["input_ids"]
    assert finish_text(tok, ids, lm.stop_ids, ["Q:"]) == "12 "
    assert finish_text(tok, ids[:2] + [tok.eos_token_id] + ids[2:], lm.stop_ids, []) == "12"
    assert tok.eos_token_id in lm.stop_ids
    with pytest.raises(NotImplementedError, match="generate_until tasks"):
        lm.loglikelihood_rolling([])


def test_chat_template_prompts_get_no_second_bos(tmp_path):
    from tokenizers import Tokenizer, processors

    folder = tmp_path / "llada_chat"
    shutil.copytree(OFFICIAL / "llada_untied", folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n"
                               "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    backend = Tokenizer.from_file(str(folder / "tokenizer.json"))  # LLaDA's tokenizer puts BOS first
    bos = backend.token_to_id("<|startoftext|>")
    backend.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A", special_tokens=[
        ("<|startoftext|>", bos)])
    backend.save(str(folder / "tokenizer.json"))
    lm = UpoFastLM(pretrained=str(folder), device="cpu", **SMALL)
    assert lm.encode("hi")[0] == bos  # a plain prompt gets the tokenizer's BOS
    prompt = lm.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt == "<|startoftext|><user>hi\n<assistant>" and lm.chat_template(True) == config["chat_template"]
    assert lm.encode(prompt).count(bos) == 1  # the template brings its own: not a second one


@pytest.mark.slow
def test_two_processes_give_what_one_gives(tmp_path):
    """Data parallel as lm-eval does it: torchrun, rank / world size from the environment, gloo on the CPU."""
    common = ["lm-eval", "--model", "upo_fast", "--model_args",
              f"pretrained={OFFICIAL / 'dream'},gen_length=16,block_length=8,steps=16,mc_num=4",
              "--tasks", "upo_fast_arith,upo_fast_choice", "--include_path", str(TASKS), "--device", "cpu",
              "--batch_size", "1", "--log_samples"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    runs = {"one": [sys.executable, "-m", "upo_fast.cli"],
            "two": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                    "-m", "upo_fast.cli"]}
    responses = {}
    for name, launcher in runs.items():
        out = tmp_path / name
        result = subprocess.run([*launcher, *common, "--output_path", str(out)], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        responses[name] = {}
        for path in out.rglob("samples_*.jsonl"):
            for line in path.read_text().splitlines():
                sample = json.loads(line)
                # filtered_resps: what the metrics read (lm-eval pads an uneven shard with a repeat of its last
                # request, whose answer it appends to that request's resps)
                responses[name][(path.name.split("_2")[0], sample["doc_id"])] = sample["filtered_resps"]
    assert len(responses["one"]) == 8 and responses["two"] == responses["one"]


class _Request:
    def __init__(self, args):
        self.args = args
