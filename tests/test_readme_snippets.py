"""The README's snippets run as a user would copy them.

Every ```python block of README.md, docs/integrations.md and docs/api.md runs, each in a fresh namespace, on tiny
LLaDA and Dream folders in the hub's layout that this test builds (``tests/hub_folders.py``: config.json with
``mask_token_id``, safetensors saved by ``save_pretrained``, a character-level tokenizer). The only changes made to
a block are the ones in ``SUBSTITUTIONS`` (the model folders and the device); every other character runs as
written. A traceback points at the document's own line numbers.

The README's lm-eval example runs too: its task YAML and JSONL are written where the README says, and its
``upo-fast lm-eval ... --include_path`` command line runs through ``upo_fast.cli.commands.main``.

Blocks that are not meant to run (output, file contents, shell) are tagged ```text, ```yaml or ```bash.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from hub_folders import make_dream_folder, make_llada_folder

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/integrations.md", "docs/api.md")
# What a user changes when copying a snippet: where the weights are, and the device. Nothing else.
SUBSTITUTIONS = {
    "/models/LLaDA-8B-Instruct": "{llada}",
    "/models/Dream-v0-Instruct-7B": "{dream}",
    '"cuda"': '"cpu"',
    "--device cuda:0": "--device cpu",
}
TAGS = ("python", "bash", "text", "yaml")
_FENCE = re.compile(r"^\s*```(.*)$")


def code_blocks(document: str) -> list[tuple[int, str, str]]:
    """(line of the opening fence, 1-based; its language tag; the block's text) for each fenced block."""
    blocks, opened, lines = [], None, []
    for number, line in enumerate((ROOT / document).read_text().splitlines(), start=1):
        match = _FENCE.match(line)
        if not match:
            if opened is not None:
                lines.append(line)
        elif opened is None:
            opened, lines = (number, match.group(1).strip()), []
        else:
            blocks.append((opened[0], opened[1], "\n".join(lines) + "\n"))
            opened = None
    assert opened is None, f"{document}: the block opened on line {opened[0]} is never closed"
    return blocks


SNIPPETS = [(document, line, text) for document in DOCUMENTS for line, tag, text in code_blocks(document)
            if tag == "python"]


def substitute(text: str, folders: dict[str, Path]) -> str:
    for old, new in SUBSTITUTIONS.items():
        text = text.replace(old, new.format(**folders))
    assert "/models/" not in text, f"a model folder with no stand-in here (add it to SUBSTITUTIONS):\n{text}"
    assert "cuda" not in text, f"a device the CPU test cannot give (add it to SUBSTITUTIONS):\n{text}"
    return text


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub")
    return {"llada": make_llada_folder(root / "LLaDA-tiny"), "dream": make_dream_folder(root / "Dream-tiny")}


@pytest.fixture
def one_thread():
    """Test processes share a few cores: with one thread a 128-step snippet takes about a second on a tiny model;
    with OpenMP's threads contending for busy cores, ten to forty."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("document, line, text", SNIPPETS, ids=[f"{d}:{n}" for d, n, _ in SNIPPETS])
def test_snippet_runs_as_written(document, line, text, folders, one_thread):
    code = "\n" * line + substitute(text, folders)  # the block's first line is the document's line + 1
    exec(compile(code, str(ROOT / document), "exec"), {"__name__": "__main__"})


def test_the_readme_shows_each_entry_point():
    readme = [text for document, _, text in SNIPPETS if document == "README.md"]
    called = set()
    for text in readme:
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                called.add(f"{getattr(node.func.value, 'id', '?')}.{node.func.attr}")
    wanted = {"upo_fast.load_model", "upo_fast.load_tokenizer", "upo_fast.llada_generate", "upo_fast.dream_generate",
              "upo_fast.generate", "upo_fast.patch", "upo_fast.unpatch", "model.generate", "model.diffusion_generate"}
    assert wanted <= called, f"the README's python blocks call none of {sorted(wanted - called)}"


def test_blocks_are_tagged_and_substitutions_are_used():
    """An untagged block could be code nobody runs; a substitution nothing needs would hide what the test changes."""
    texts = []
    for document in DOCUMENTS:
        for line, tag, text in code_blocks(document):
            assert tag in TAGS, f"{document}:{line}: a block tagged {tag!r} (one of {TAGS}: only python runs)"
            texts.append(text)
    unused = [old for old in SUBSTITUTIONS if not any(old in text for text in texts)]
    assert not unused, f"SUBSTITUTIONS names what no block holds: {unused}"


def _lm_eval_example() -> tuple[str, str, str]:
    """The README's task YAML, its JSONL lines and the lm-eval command line that names ``--include_path``."""
    blocks = code_blocks("README.md")
    yaml_text = [text for _, tag, text in blocks if tag == "yaml"]
    jsonl = [text for _, tag, text in blocks if tag == "text" and all(
        line.startswith("{") for line in text.splitlines())]
    commands = [command for _, tag, text in blocks if tag == "bash"
                for command in text.replace("\\\n", " ").splitlines() if "--include_path" in command]
    assert len(yaml_text) == len(jsonl) == len(commands) == 1, "README: one task YAML, its JSONL, one command"
    return yaml_text[0], jsonl[0], commands[0]


def test_readme_lm_eval_task_runs(folders, tmp_path, monkeypatch, one_thread):
    pytest.importorskip("lm_eval", reason='lm-evaluation-harness is the optional extra: pip install -e ".[eval]"')
    import yaml

    from upo_fast.cli.commands import main

    task_yaml, jsonl, command = _lm_eval_example()
    argv = shlex.split(substitute(command, folders))
    assert argv[:2] == ["upo-fast", "lm-eval"], command
    task = yaml.safe_load(task_yaml)
    include = tmp_path / argv[argv.index("--include_path") + 1]
    include.mkdir(parents=True)
    (include / f"{task['task']}.yaml").write_text(task_yaml)
    data = tmp_path / task["dataset_kwargs"]["data_files"]["test"]
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(jsonl)
    assert [json.loads(line) for line in jsonl.splitlines()]
    monkeypatch.chdir(tmp_path)  # the paths in the command and the YAML are relative to where lm-eval runs
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))

    assert main(argv[1:]) == 0
    output = Path(argv[argv.index("--output_path") + 1])
    (results,) = output.rglob("results_*.json")
    report = json.loads(results.read_text())
    assert "exact_match,none" in report["results"][task["task"]]
    (samples,) = output.rglob(f"samples_{task['task']}_*.jsonl")
    assert len(samples.read_text().splitlines()) == len(jsonl.splitlines())
