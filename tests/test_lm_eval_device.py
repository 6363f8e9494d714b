"""``device`` and ``batch_size`` of the ``upo_fast`` lm-eval model, which lm-eval passes beside ``model_args``
(its command line always: ``--device`` defaults to cuda:0, ``--batch_size`` to 1): ``model_args`` wins, with a
warning when the user gave both and they differ; lm-eval's untyped default cuda:0 runs on the CPU (with a
warning) where there is no CUDA; a device the user typed that cannot work is a one-line ValueError naming it.
Through ``lm_eval.simple_evaluate`` and ``upo-fast lm-eval``, on a machine made CUDA-less (``no_cuda``) so that the
tests mean the same on a GPU host."""

import logging
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason='lm-evaluation-harness is the optional extra: pip install -e ".[eval]"')

from upo_fast.cli.commands import main  # noqa: E402
from upo_fast.integrations.lm_eval import UpoFastLM, model_arguments  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DREAM = ROOT / "tests" / "fixtures" / "official" / "dream"
TASKS = ROOT / "tests" / "data" / "lm_eval"
SMALL = "gen_length=8,block_length=8,steps=8"
LOGGER = "upo_fast.integrations.lm_eval"
FALLBACK = ("CUDA is not available on this machine: running on cpu instead of lm-eval's default device cuda:0 "
            "(pass --device cpu to choose it)")


pytestmark = pytest.mark.usefixtures("lm_eval_offline")


@pytest.fixture(autouse=True)
def fresh_lm_eval_logging(monkeypatch):
    """lm-eval's command line gives its logger a StreamHandler once per process, on the sys.stderr of that moment:
    an earlier test's capture, closed since (every later record then prints a logging error with a traceback)."""
    import lm_eval.utils

    monkeypatch.setattr(lm_eval.utils, "_LOGGING_CONFIGURED", False)
    monkeypatch.setattr(logging.getLogger("lm_eval"), "handlers", [])


@pytest.fixture(autouse=True)
def local_tasks(monkeypatch):
    """lm-eval's command line indexes its thousands of own task YAMLs (about 20 s on two cores): these tests read
    only tests/data/lm_eval."""
    import lm_eval.tasks

    class LocalTaskManager(lm_eval.tasks.TaskManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "include_defaults": False})

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", LocalTaskManager)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def built(monkeypatch):
    """The UpoFastLM instances lm-eval builds (lm-eval's registry holds the class, so its patched __init__ runs)."""
    made, init = [], UpoFastLM.__init__

    def record(self, **kwargs):
        init(self, **kwargs)
        made.append(self)

    monkeypatch.setattr(UpoFastLM, "__init__", record)
    return made


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def differ(key, mine, name, theirs) -> str:
    return f"model_args {key}={mine} and {name}={theirs} differ: using model_args' {key}={mine}"


def simple_evaluate(model_args, **options):
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model="upo_fast", model_args=model_args, tasks=["upo_fast_arith"], limit=1,
                                   task_manager=TaskManager(include_path=str(TASKS), include_defaults=False),
                                   **options)


def cli(*options: str) -> int:
    return main(["lm-eval", "--model", "upo_fast", "--tasks", "upo_fast_arith", "--include_path", str(TASKS),
                 "--limit", "1", *options])


# ---- lm_eval.simple_evaluate ------------------------------------------------------------------------------------


def test_simple_evaluate_device_in_model_args_only(no_cuda, built, caplog):
    simple_evaluate({"pretrained": str(DREAM), "device": "cpu", "batch_size": 2, "gen_length": 8, "steps": 8,
                     "block_length": 8})
    assert built[-1].device == torch.device("cpu") and built[-1].options.batch_size == 2
    assert warnings_of(caplog) == []


def test_simple_evaluate_model_args_win_over_its_options_with_a_warning(no_cuda, built, caplog):
    simple_evaluate(f"pretrained={DREAM},device=cpu,batch_size=2,{SMALL}", device="cuda", batch_size=3)
    assert built[-1].device == torch.device("cpu") and built[-1].options.batch_size == 2
    assert sorted(warnings_of(caplog)) == [differ("batch_size", 2, "lm-eval's batch_size", 3),
                                           differ("device", "cpu", "lm-eval's device", "cuda")]


def test_simple_evaluate_without_a_device_runs_on_the_cpu_without_cuda(no_cuda, built, caplog):
    simple_evaluate(f"pretrained={DREAM},{SMALL}", device=None)  # lm-eval then passes no device at all
    assert built[-1].device == torch.device("cpu") and warnings_of(caplog) == []


@pytest.mark.parametrize("model_args, device, named", [
    ("", "cuda:0", "lm-eval's device='cuda:0'"),  # typed by the caller of simple_evaluate: no fallback
    ("", "gpu", "lm-eval's device='gpu'"),
    ("device=gpu,", "cpu", "model_args device='gpu'"),
])
def test_simple_evaluate_refuses_a_device_that_cannot_work(no_cuda, model_args, device, named):
    with pytest.raises(ValueError) as caught:
        simple_evaluate(f"pretrained={DREAM},{model_args}{SMALL}", device=device)
    message = str(caught.value)
    assert message.startswith(named) and "cpu" in message and "\n" not in message, message


# ---- upo-fast lm-eval ----------------------------------------------------------------------------------------------


def test_cli_device_in_model_args_only(no_cuda, built, caplog):
    """lm-eval passes its default cuda:0 as well: model_args' device is used, and no warning names a value the
    user never typed."""
    assert cli("--model_args", f"pretrained={DREAM},device=cpu,batch_size=2,{SMALL}") == 0
    assert built[-1].device == torch.device("cpu") and built[-1].options.batch_size == 2
    assert warnings_of(caplog) == []


def test_cli_model_args_win_over_the_options_with_a_warning(no_cuda, built, caplog):
    assert cli("--model_args", f"pretrained={DREAM},device=cpu,batch_size=2,{SMALL}", "--device", "cuda",
               "-b", "3") == 0
    assert built[-1].device == torch.device("cpu") and built[-1].options.batch_size == 2
    assert sorted(warnings_of(caplog)) == [differ("batch_size", 2, "--batch_size", 3),
                                           differ("device", "cpu", "--device", "cuda")]


def test_cli_device_option_only(no_cuda, built, caplog):
    assert cli("--model_args", f"pretrained={DREAM},{SMALL}", "--device", "cpu", "--batch_size", "2") == 0
    assert built[-1].device == torch.device("cpu") and built[-1].options.batch_size == 2
    assert warnings_of(caplog) == []


def test_cli_without_a_device_falls_back_to_the_cpu_with_a_warning(no_cuda, built, caplog):
    """As lm-eval's ``hf`` model does: its default cuda:0 is not the user's choice."""
    assert cli("--model_args", f"pretrained={DREAM},{SMALL}") == 0
    assert built[-1].device == torch.device("cpu")
    assert warnings_of(caplog) == [FALLBACK]


@pytest.mark.parametrize("options, named", [
    (["--device", "gpu"], "--device='gpu'"),
    (["--device=cuda:0"], "--device='cuda:0'"),  # typed, though it is lm-eval's default: no fallback
    (["--dev", "cuda"], "--device='cuda'"),  # argparse's abbreviation
    (["--model_args", f"pretrained={DREAM},device=cuda"], "model_args device='cuda'"),
])
def test_cli_refuses_a_device_that_cannot_work_in_one_line(no_cuda, capsys, options, named):
    if "--model_args" not in options:
        options = ["--model_args", f"pretrained={DREAM},{SMALL}", *options]
    assert cli(*options) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"upo-fast lm-eval: error: {named}") and "cpu" in err[-1], err[-1]
    assert "Traceback" not in "\n".join(err)


@pytest.mark.gpu
def test_cli_without_a_device_runs_on_cuda_where_there_is_one(built, caplog, capsys):
    assert cli("--model_args", f"pretrained={DREAM},{SMALL}") == 0
    assert built[-1].device.type == "cuda" and warnings_of(caplog) == []
    assert cli("--model_args", f"pretrained={DREAM},{SMALL}", "--device", "cuda:99") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "upo-fast lm-eval: error: --device='cuda:99': this machine has")


# ---- how the command line is read ----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, untyped", [
    (["lm-eval", "run", "--model", "upo_fast"], True),
    (["/venv/bin/lm_eval", "--model", "upo_fast"], True),
    ([str(Path(lm_eval.__file__).with_name("__main__.py")), "--model", "upo_fast"], True),  # python -m lm_eval
    (["lm-eval", "run", "--device", "cuda:0"], False),
    (["lm-eval", "run", "--device=cuda:0"], False),
    (["lm-eval", "run", "--devi", "cuda:0"], False),  # argparse's abbreviation
    (["my_script.py"], False),  # a program calling simple_evaluate chose its device itself
])
def test_lm_eval_default_device_is_told_from_a_typed_one(monkeypatch, no_cuda, caplog, argv, untyped):
    monkeypatch.setattr(sys, "argv", argv)
    if untyped:
        assert model_arguments({"pretrained": "x"}, {"device": "cuda:0", "batch_size": 1}) == {
            "pretrained": "x", "batch_size": 1}
        assert warnings_of(caplog) == [FALLBACK]
    else:
        with pytest.raises(ValueError, match="device='cuda:0'"):
            model_arguments({"pretrained": "x"}, {"device": "cuda:0"})


def test_batch_size_flags_and_equal_values(monkeypatch, caplog):
    for typed in (["-b", "3"], ["-b3"], ["--batch_size", "3"], ["--batch=3"]):
        monkeypatch.setattr(sys, "argv", ["lm-eval", "run", *typed])
        assert model_arguments({"batch_size": 2}, {"batch_size": "3"}) == {"batch_size": 2}
        assert len(warnings_of(caplog)) == 1, typed
        caplog.clear()
    monkeypatch.setattr(sys, "argv", ["lm-eval", "run"])
    assert model_arguments({"batch_size": 2}, {"batch_size": 1}) == {"batch_size": 2}  # lm-eval's default 1
    assert model_arguments({"device": "cpu"}, {"device": "cpu", "max_batch_size": None}) == {"device": "cpu"}
    assert warnings_of(caplog) == []
