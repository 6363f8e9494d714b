"""Zebra puzzles for people and files: the puzzle batch (``ZebraPuzzles``), the attribute/value names, clues as
English sentences, the grid as a table, and the JSON format of users' puzzle files. ``ZebraTask``'s text and file
methods call these; this module never imports ``zebra.py`` (it sits below it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from upo_fast.tasks.zebra_solver import HOUSE_RELATIONS, Relation

R = Relation


@dataclass
class ZebraPuzzles:
    """A batch of puzzles: ``clues`` [N, max_clues, 3] int64 (unused slots -1), ``givens`` [N, A, H] int64
    (0 = blank). Indexing with a slice or index array gives a ZebraPuzzles; an int gives a batch of one."""

    clues: np.ndarray
    givens: np.ndarray

    def __post_init__(self):
        self.clues, self.givens = np.asarray(self.clues, np.int64), np.asarray(self.givens, np.int64)
        if self.clues.ndim != 3 or self.clues.shape[2] != 3 or self.givens.ndim != 3 \
                or len(self.clues) != len(self.givens):
            raise ValueError(f"clues must be [N, C, 3] and givens [N, A, H], got {self.clues.shape} and "
                             f"{self.givens.shape}")

    def __len__(self) -> int:
        return len(self.givens)

    def __getitem__(self, index) -> ZebraPuzzles:
        if isinstance(index, (int, np.integer)):
            index = [index]
        return ZebraPuzzles(self.clues[index], self.givens[index])


ATTRIBUTES = (  # (name, noun-phrase template, values); the first A attributes and H values are used
    ("colour", "the {} house", ("red", "green", "blue", "yellow", "white", "ivory")),
    ("nationality", "the {}", ("Brit", "Swede", "Dane", "Norwegian", "German", "Japanese")),
    ("pet", "the {} owner", ("dog", "cat", "bird", "horse", "fish", "zebra")),
    ("drink", "the {} drinker", ("tea", "coffee", "milk", "water", "juice", "beer")),
    ("sport", "the {} player", ("tennis", "golf", "soccer", "hockey", "rugby", "cricket")),
    ("job", "the {}", ("doctor", "teacher", "baker", "pilot", "nurse", "farmer")),
)


def _phrase(task, item: int) -> str:
    a, v = divmod(int(item), task.houses)
    return ATTRIBUTES[a][1].format(task.value_names[a][v])


def clue_sentence(task, rel: int, x: int, y: int) -> str:
    """One clue in English (houses numbered from 1)."""
    rel = R(rel)
    if rel in (R.SAME, R.NOT_SAME) and x // task.houses == 0:  # the colour is always the object
        x, y = y, x
    subject = _phrase(task, x)
    is_colour = x // task.houses == 0
    verb = "is" if is_colour else "lives"
    if rel in HOUSE_RELATIONS:
        if is_colour:
            text = f"{subject} is {'not ' if rel == R.NOT_AT else ''}house {y + 1}"
        else:
            text = f"{subject} {'does not live' if rel == R.NOT_AT else 'lives'} in house {y + 1}"
    elif rel in (R.SAME, R.NOT_SAME):
        live = "lives" if rel == R.SAME else "does not live"
        where = _phrase(task, y) if y // task.houses == 0 else f"the same house as {_phrase(task, y)}"
        text = f"{subject} {live} in {where}"
    else:
        how = {R.LEFT_OF: "immediately left of", R.NEXT_TO: "next to", R.BEFORE: "somewhere left of"}[rel]
        text = f"{subject} {verb} {how} {_phrase(task, y)}"
    return text[0].upper() + text[1:] + "."


def format_puzzle(task, puzzles, index: int = 0) -> str:
    """Puzzle ``index`` as text: the setting, the clues as numbered sentences, and the givens."""
    lines = [f"{task.houses} houses in a row, numbered 1 to {task.houses} from the left; each value below "
             "belongs to exactly one house:"]
    lines += [f"  {name}: {', '.join(values)}" for name, values in zip(task.attribute_names, task.value_names)]
    lines.append("Clues:")
    clues = task._clue_list(puzzles.clues[index], "puzzles.clues")
    lines += [f"{i}. {clue_sentence(task, *clue)}" for i, clue in enumerate(clues, start=1)]
    givens = puzzles.givens[index]
    if givens.any():
        lines.append("Given:")
        lines += [f"  The {task.attribute_names[a]} of house {k + 1} is {task.value_names[a][givens[a, k] - 1]}."
                  for a, k in zip(*np.nonzero(givens))]
    return "\n".join(lines)


def format_grid(task, grid) -> str:
    """A table with one row per attribute and one column per house; value names, '.' for blanks."""
    grid = task._grids(grid, "grid")[0]
    rows = [[""] + [f"house {k + 1}" for k in range(task.houses)]]
    rows += [[name] + ["." if v == 0 else names[v - 1] for v in row]
             for name, names, row in zip(task.attribute_names, task.value_names, grid)]
    widths = [max(len(r[c]) for r in rows) for c in range(task.houses + 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def save_json(task, path, puzzles, solutions) -> None:
    """Write puzzles and solutions as {"houses", "attributes", "puzzles": [{"clues", "givens", "solution"}]}."""
    solutions = task._grids(solutions, "solutions")
    items = [{"clues": [list(c) for c in task._clue_list(puzzles.clues[i])],
              "givens": puzzles.givens[i].tolist(), "solution": solutions[i].tolist()} for i in range(len(puzzles))]
    data = {"houses": task.houses, "attributes": task.attributes, "puzzles": items}
    Path(path).write_text(json.dumps(data, indent=1))


def load_json(task, path):
    """(puzzles, solutions) from a ``save_json`` file. Any problem (missing file, bad JSON, wrong sizes, bad
    ids, a solution that breaks a clue or given, a puzzle without a unique solution) raises ValueError naming
    the file and puzzle."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("puzzles"), list) or not data["puzzles"]:
        raise ValueError(f"{path}: expected an object with a non-empty 'puzzles' list")
    if (data.get("houses"), data.get("attributes")) != (task.houses, task.attributes):
        raise ValueError(f"{path}: houses/attributes are {data.get('houses')}/{data.get('attributes')}, "
                         f"this task is {task.houses}/{task.attributes}")
    clues = np.full((len(data["puzzles"]), task.max_clues, 3), -1, np.int64)
    givens, solutions = [], []
    for i, item in enumerate(data["puzzles"]):
        where = f"{path}, puzzle {i}"
        try:
            clue_list = task._clue_list(np.asarray(item["clues"], np.int64).reshape(-1, 3), where)
            given, solution = (task._grids(item[key], f"{where}: {key}")[0] for key in ("givens", "solution"))
        except (KeyError, TypeError, ValueError) as err:
            message = str(err) if str(err).startswith(str(path)) else f"{where}: malformed ({err!r})"
            raise ValueError(message) from None
        if len(clue_list) > task.max_clues:
            raise ValueError(f"{where}: {len(clue_list)} clues, more than max_clues={task.max_clues}")
        clues[i, :len(clue_list)] = clue_list
        one = ZebraPuzzles(clues[i:i + 1], given[None])
        if not task.satisfies(solution[None], one)[0]:
            raise ValueError(f"{where}: the solution is not a valid grid satisfying the clues and givens")
        if task.count_solutions(clue_list, given, limit=2) != 1:
            raise ValueError(f"{where}: the puzzle does not have a unique solution")
        givens.append(given)
        solutions.append(solution)
    return ZebraPuzzles(clues, np.stack(givens)), np.stack(solutions)
