"""Re-sweep saved commit policies on the validation puzzles (VALIDATION_SEED) with more commit probabilities.

    OMP_NUM_THREADS=1 python resweep_validation.py 300 0.995,0.998,0.999 runs/commit9_s1 runs/commit9_s1/last
"""

import json
import sys

from upo_fast.assets import load_task_model
from upo_fast.models.saved import load_saved
from upo_fast.policy import UnmaskingPolicy
from upo_fast.tasks import get_task
from upo_fast.training.commit_imitation import sweep_validation
from upo_fast.training.policy_init import VALIDATION_SEED

task = get_task("sudoku9")
mdm = load_task_model(None, task)
val = task.make_puzzles(int(sys.argv[1]), seed=VALIDATION_SEED)
probs = [float(p) for p in sys.argv[2].split(",")]
for folder in sys.argv[3:]:
    policy = load_saved(UnmaskingPolicy, folder)
    for row in sweep_validation(mdm, task, policy, val, probs):
        print(json.dumps({"policy": folder, **row}), flush=True)
