"""The layers of ../shared/DESIGN.md, checked on the source with ``ast`` (nothing of the package is imported):

* no import goes from a layer to a layer above it, imports inside functions included;
* no chain of imports leads from a module back to itself (an import circle);
* every module of ``upo_fast/`` and ``kernels/`` (installed as ``upo_fast.kernels``) has its layer in ``LAYERS``
  below, and nothing imports the top-level name ``kernels`` (a PyPI package of that name exists).

Edges: ``import upo_fast.a.b`` and ``from upo_fast.a.b import c`` lead to ``upo_fast.a.b``, to ``upo_fast.a.b.c``
when that is a module, and to the packages above them (their ``__init__`` runs first), except the packages that
hold the importing module itself: Python has started those before the module runs, so they add no dependency
(``from upo_fast import ops`` in the sampler reads the submodule, not the lazy public API). ``from P import name``
where ``name`` is not a module reads ``P/__init__`` and counts. ``upo_fast/__init__.py`` names its lazy exports
as strings; they count as its imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom layer first: a module may import modules of its own layer and of the layers listed before it. The folders
# of upo_fast/ show these rows (HOMES below); a package's __init__ sits in the lowest row of its modules and
# imports nothing, so that importing one module of a folder does not pull in the rest.
LAYERS: dict[str, list[str]] = {
    # Foundations: the models (TinyMDM, native LLaDA/Dream) and their loading; tasks (data, rewards, metrics);
    # atomic checkpoints; input checks; shipped models and policies (assets); names the CLI parses with.
    "foundations": [
        "upo_fast.models", "upo_fast.models.attention", "upo_fast.models.dream", "upo_fast.models.llada",
        "upo_fast.models.kv_cache", "upo_fast.models.loading", "upo_fast.models.native_twin", "upo_fast.models.saved",
        "upo_fast.models.tiny_mdm",
        "upo_fast.tasks", "upo_fast.tasks.math_answers", "upo_fast.tasks.math_tasks", "upo_fast.tasks.metrics",
        "upo_fast.tasks.sudoku", "upo_fast.tasks.sudoku_solver", "upo_fast.tasks.zebra", "upo_fast.tasks.zebra_io",
        "upo_fast.tasks.zebra_solver", "upo_fast.tasks.arith",
        "upo_fast.checkpoints", "upo_fast.checkpoint_files", "upo_fast.validation", "upo_fast.assets", "upo_fast.names",
    ],
    # Ops: token statistics and position selection, the Triton kernels and their references.
    "ops": [
        "upo_fast.ops", "upo_fast.kernels.compile_check", "upo_fast.kernels.fused_head",
        "upo_fast.kernels.policy_divergence", "upo_fast.kernels.position_select", "upo_fast.kernels.triton_support",
        "upo_fast.kernels.vocab_stats",
    ],
    # Sampling, model adapter: any HF MDM behind one interface (mask id, logit shift, last-block hook, head).
    "sampling: model adapter": ["upo_fast.sampling", "upo_fast.sampling.families", "upo_fast.sampling.adapters"],
    # Sampling, scorers: statistics (and the policy's scores) -> scores over candidate positions.
    "sampling: scorers": ["upo_fast.sampling.scorers"],
    # Sampling, loop: schedules, commit rules, the step loop, CUDA graphs, the drop-in samplers (Fast-dLLM's Dream
    # block sampler too), LLaDA's likelihood estimate, patching loaded models.
    "sampling: loop": [
        "upo_fast.sampling.schedules", "upo_fast.sampling.commit_rules", "upo_fast.sampling.step_state",
        "upo_fast.sampling.loop",
        "upo_fast.sampling.cuda_graphs", "upo_fast.sampling.llada_dropin", "upo_fast.sampling.dream_dropin",
        "upo_fast.sampling.dream_blocks", "upo_fast.sampling.likelihood",
        "upo_fast.sampling.patching",
    ],
    # Policy: the unmasking-policy network.
    "policy": ["upo_fast.policy_config", "upo_fast.policy"],
    # Task evaluation of orders (grids: solve_puzzles, evaluate, pass_at, HELD_OUT_SEED; text: evaluate_math): below
    # training, because the trainers validate with it (one home for each task kind's evaluation).
    "task evaluation": ["upo_fast.evaluation", "upo_fast.evaluation.grids", "upo_fast.evaluation.text"],
    # Training: rollouts, references, losses, update, trainer, imitation, config, distributed, MDM pretraining.
    "training": [
        "upo_fast.training", "upo_fast.training.config", "upo_fast.training.distributed",
        "upo_fast.training.imitation", "upo_fast.training.losses", "upo_fast.training.policy_init",
        "upo_fast.training.references", "upo_fast.training.rollout", "upo_fast.training.trainer",
        "upo_fast.training.update", "upo_fast.training.pretrain_mdm", "upo_fast.training.finite_steps",
        "upo_fast.training.commit_imitation", "upo_fast.training.commit_grpo", "upo_fast.training.pretrain_text",
        "upo_fast.training.text_env",
    ],
    # Evaluation: intervals, plots, order pictures, the demo (its text line too), FLOP counts
    # (benchmarks/ itself is outside the package).
    "evaluation": [
        "upo_fast.evaluation.intervals", "upo_fast.evaluation.plots", "upo_fast.evaluation.order_pictures",
        "upo_fast.evaluation.demo", "upo_fast.evaluation.demo_text", "upo_fast.evaluation.flops",
        "upo_fast.evaluation.parallel_curve",
    ],
    # CLI and integrations: commands, argument types, lm-eval, the lazy public API.
    "CLI and integrations": [
        "upo_fast", "upo_fast.cli", "upo_fast.cli.commands", "upo_fast.cli.args", "upo_fast.cli.evaluate",
        "upo_fast.cli.__main__", "upo_fast.cli.sample", "upo_fast.cli.commit",
        "upo_fast.integrations", "upo_fast.integrations.lm_eval",
        "upo_fast.integrations.lm_eval_generate", "upo_fast.integrations.lm_eval_tasks",
        "upo_fast.integrations.lm_eval_tasks.arith", "upo_fast.integrations.lm_eval_tasks.arith.utils",
    ],
}
# The folder (package) each layer lives in; None: a module at the top of upo_fast/ (a few foundations, ops, policy).
HOMES: dict[str, set[str | None]] = {
    "foundations": {"upo_fast.models", "upo_fast.tasks", "upo_fast.assets", None},
    "ops": {"upo_fast.kernels", None},
    "sampling: model adapter": {"upo_fast.sampling"},
    "sampling: scorers": {"upo_fast.sampling"},
    "sampling: loop": {"upo_fast.sampling"},
    "policy": {None},
    "task evaluation": {"upo_fast.evaluation"},
    "training": {"upo_fast.training"},
    "evaluation": {"upo_fast.evaluation"},
    "CLI and integrations": {"upo_fast.cli", "upo_fast.integrations", None},
}
TOP_LEVEL_AT_MOST = 10  # modules directly in upo_fast/, __init__ included
LAYER_OF = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}
LAYER_NAMES = list(LAYERS)


def source_modules() -> dict[str, Path]:
    """{module name: file} for every .py file of upo_fast/ and kernels/ (as upo_fast.kernels: a namespace folder, no
    ``__init__``, reached through the symlink upo_fast/kernels, which rglob does not follow)."""
    found = {}
    for folder, package in (("upo_fast", ("upo_fast",)), ("kernels", ("upo_fast", "kernels"))):
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = package + path.relative_to(ROOT / folder).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = source_modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _packages_of(name: str) -> list[str]:
    """The packages above ``name`` (their ``__init__`` runs before it)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


# Namespace packages (folders without __init__.py) run no code, so passing through them adds no edge.
NAMESPACE_PACKAGES = {"upo_fast.kernels"}


def _with_parents(target: str, importer: str) -> set[str]:
    started = set(_packages_of(importer)) | ({importer} if _is_package(importer) else set()) | NAMESPACE_PACKAGES
    return {name for name in [*_packages_of(target), target] if name.startswith("upo_fast") and name not in started}


def _lazy_exports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) of the string values of a module-level ``_EXPORTS = {name: "module"}``."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return [(v.lineno, v.value) for v in node.value.values if isinstance(v, ast.Constant)]
    return []


def imports_of(importer: str, path: Path) -> list[tuple[int, set[str]]]:
    """(line, target modules) of every import in the file, at any depth. A target that is not a module of the
    package (a typo, a removed module) is kept, so the tests name it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = [(line, _with_parents(module, importer)) for line, module in _lazy_exports(tree)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, _with_parents(a.name, importer))
                      for a in node.names if a.name.startswith("upo_fast")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package
                anchor = importer.split(".")[: len(importer.split(".")) - node.level + _is_package(importer)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if not base.startswith("upo_fast"):
                continue
            targets = _with_parents(base, importer)
            submodules = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
            if len(submodules) < len(node.names):  # reads names of base's own __init__
                targets.add(base)
            found.append((node.lineno, targets | submodules))
    return [(line, targets) for line, targets in found if targets]


def _where(module: str, line: int) -> str:
    path = MODULES[module]
    text = path.read_text().splitlines()[line - 1].strip()
    return f"{path.relative_to(ROOT)}:{line}: {text}"


def import_graph() -> dict[str, dict[str, int]]:
    """{module: {imported module: first line}} over the package."""
    graph = {}
    for module, path in MODULES.items():
        edges: dict[str, int] = {}
        for line, targets in imports_of(module, path):
            for target in targets - {module}:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def test_every_module_has_a_layer():
    missing = [f"{path.relative_to(ROOT)} ({module})" for module, path in MODULES.items() if module not in LAYER_OF]
    assert not missing, ("modules without a layer; add each to LAYERS in tests/test_layering.py, under the layer of "
                         "../shared/DESIGN.md it belongs to:\n  " + "\n  ".join(missing))
    stale = sorted(set(LAYER_OF) - set(MODULES))
    assert not stale, f"LAYERS in tests/test_layering.py names modules that do not exist: {stale}"
    twice = [m for m in LAYER_OF if sum(m in modules for modules in LAYERS.values()) > 1]
    assert not twice, f"modules in more than one layer: {twice}"


def test_imports_name_existing_modules():
    unknown = [f"{_where(module, line)} -> {target}" for module, edges in import_graph().items()
               for target, line in edges.items() if target not in MODULES]
    assert not unknown, "imports of modules that do not exist:\n  " + "\n  ".join(unknown)


def test_no_import_goes_up_a_layer():
    upward = []
    for module, edges in import_graph().items():
        for target, line in sorted(edges.items(), key=lambda item: item[1]):
            if target in LAYER_OF and module in LAYER_OF and LAYER_OF[target] > LAYER_OF[module]:
                upward.append(f"{_where(module, line)}  [{LAYER_NAMES[LAYER_OF[module]]} -> "
                              f"{LAYER_NAMES[LAYER_OF[target]]}: {target}]")
    assert not upward, "imports from a lower layer to a higher one (../shared/DESIGN.md, Layers):\n  " + \
        "\n  ".join(upward)


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One circle through each strongly connected group of modules (Tarjan), as [a, b, ..., a]."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_circle_in(graph, group) for group in groups]


def _circle_in(graph: dict[str, dict[str, int]], group: set[str]) -> list[str]:
    """A shortest circle from the group's first module back to itself, inside the group (breadth first)."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt == start:
                    return paths[node] + [start]
                if nxt in group and nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"no circle in {group}")


def test_no_import_circles():
    graph = import_graph()
    circles = []
    for circle in _cycles(graph):
        steps = [_where(a, graph[a][b]) + f"  [-> {b}]" for a, b in zip(circle, circle[1:])]
        circles.append(" -> ".join(circle) + "\n    " + "\n    ".join(steps))
    assert not circles, "import circles (move the shared piece to the lower module):\n  " + "\n  ".join(circles)


def test_the_layer_check_can_fail():
    graph = import_graph()
    assert graph["upo_fast.cli.commands"] and LAYER_OF["upo_fast.cli.commands"] > LAYER_OF["upo_fast.sampling.loop"]
    assert "upo_fast.sampling.loop" in graph["upo_fast.evaluation.grids"]  # edges are found, also inside functions:
    assert "upo_fast.training.trainer" in graph["upo_fast.cli.commands"]
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c", "a"]]
    assert _with_parents("upo_fast.tasks.zebra_io", "upo_fast.tasks.zebra") == {"upo_fast.tasks.zebra_io"}
    assert _with_parents("upo_fast.tasks.sudoku", "upo_fast.cli.commands") == \
        {"upo_fast.tasks", "upo_fast.tasks.sudoku"}


def test_nothing_imports_the_top_level_kernels_name():
    wrong = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            wrong += [_where(module, node.lineno) for name in names if name.split(".")[0] == "kernels"]
    assert not wrong, "import upo_fast.kernels..., never kernels (a PyPI package of that name exists):\n  " + \
        "\n  ".join(wrong)


def _home(module: str) -> str | None:
    """The package a module sits in below upo_fast (its own name for a package's __init__), None at the top."""
    parts = module.split(".")
    package = parts if _is_package(module) else parts[:-1]
    return ".".join(package[:2]) if len(package) > 1 else None


def test_each_layer_lives_in_its_folder():
    misplaced = [f"{MODULES[m].relative_to(ROOT)} ({layer}: belongs in {sorted(map(str, HOMES[layer]))})"
                 for layer, modules in LAYERS.items() for m in modules if m in MODULES and _home(m) not in HOMES[layer]]
    assert not misplaced, "modules outside their layer's folder:\n  " + "\n  ".join(misplaced)
    top = sorted(m for m in MODULES if _home(m) is None)
    assert len(top) <= TOP_LEVEL_AT_MOST, \
        f"{len(top)} modules at the top of upo_fast/ (at most {TOP_LEVEL_AT_MOST}): {top}"


def test_package_inits_import_nothing_and_say_what_lives_there():
    for module, path in MODULES.items():
        if not _is_package(module) or module == "upo_fast":
            continue
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path.relative_to(ROOT)}: one docstring says what lives in the folder"
        if module in ("upo_fast.sampling", "upo_fast.evaluation", "upo_fast.cli"):
            imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert not imports, f"{path.relative_to(ROOT)} imports: it spans several layers, so it must import nothing"


def test_no_two_modules_share_a_name():
    by_name: dict[str, list[str]] = {}
    for path in MODULES.values():
        if path.stem not in ("__init__", "__main__"):
            by_name.setdefault(path.stem, []).append(str(path.relative_to(ROOT)))
    shared = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert not shared, f"modules that share a name but not a meaning (rename one): {shared}"
