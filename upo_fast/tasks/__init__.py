"""Tasks: grid puzzles that a small masked diffusion model fills in place (Sudoku, Zebra), and text tasks for
LLaDA/Dream (GSM8K, MATH500: prompts, answer extraction, rewards, see ``math_tasks``; ``arith``, generated column
additions for the small shipped LLaDA/Dream models, see ``arith``)."""

from __future__ import annotations

import re
from functools import partial

from upo_fast.tasks import arith
from upo_fast.tasks.math_tasks import TASK_NAMES as MATH_TASKS
from upo_fast.tasks.sudoku import SudokuTask
from upo_fast.tasks.zebra import ZebraTask

TASKS = {"sudoku4": partial(SudokuTask, 4), "sudoku9": partial(SudokuTask, 9), "zebra": ZebraTask}
GRID_TASKS = tuple(TASKS)
TEXT_TASKS = (*MATH_TASKS, arith.NAME)
_ZEBRA_SIZE = re.compile(r"zebra(\d+)x(\d+)")


def get_task(name: str):
    """A fresh grid task by name: ``sudoku4``, ``sudoku9``, ``zebra`` (4 houses x 4 attributes) or ``zebraHxA``
    (H houses, A attributes)."""
    size = _ZEBRA_SIZE.fullmatch(name) if isinstance(name, str) else None
    if size:
        return ZebraTask(int(size.group(1)), int(size.group(2)))
    if name in TEXT_TASKS:
        raise ValueError(f"{name!r} is a text task for LLaDA/Dream (upo_fast.tasks.math_tasks, upo_fast.tasks.arith), "
                         "not a grid task")
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}, zebraHxA (e.g. zebra5x3)")
    return TASKS[name]()


def is_grid_task(name: str) -> bool:
    return name in TASKS or bool(isinstance(name, str) and _ZEBRA_SIZE.fullmatch(name))
