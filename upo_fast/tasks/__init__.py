"""Tasks for training and evaluating small masked diffusion models."""

from functools import partial

from upo_fast.tasks.sudoku import SudokuTask

TASKS = {"sudoku4": partial(SudokuTask, 4), "sudoku9": partial(SudokuTask, 9)}


def get_task(name: str):
    """A fresh task instance by name, e.g. ``get_task("sudoku9")``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]()
