"""The trainer's environment for the text task ``arith`` (``upo-fast train --task arith``): the paper's text setting
in small. The frozen MDM is a LLaDA / Dream folder (default: the shipped ``arith_llada``); a rollout completes the
step's prompts with ``generate`` block by block (``gen_length`` / ``block_length``, one token a step), the policy
choosing the position among the active block's masks (among their K most confident under a Top-K reference);
the reward is 1 for a right final number (``upo_fast.tasks.arith.correct``), else 0. Validation: the greedy
policy's exact match on the task's validation split, never its test split.
"""

from __future__ import annotations

import numpy as np

from upo_fast.evaluation.text import evaluate_math, task_prompts
from upo_fast.models.loading import load_text_model
from upo_fast.sampling.loop import generate
from upo_fast.tasks import arith
from upo_fast.training.rollout import TrajectoryRecorder

DEFAULT_MODEL = "arith_llada"


class TextEnv:
    select = {"solved": "val_accuracy"}  # TrainConfig.select_on -> validation key (exact match)

    def __init__(self, cfg, device):
        from upo_fast.assets import model_folder

        if cfg.task != arith.NAME:
            raise ValueError(f"task={cfg.task!r}: text training runs on {arith.NAME!r} (generated problems with a "
                             "checkable answer)")
        self.cfg = cfg
        folder = model_folder(cfg.model or DEFAULT_MODEL, None)
        self.mdm, self.tokenizer = load_text_model(folder, device)
        self.gen_length = cfg.gen_length or arith.GEN_LENGTH
        self.block_length = cfg.block_length or arith.BLOCK_LENGTH

    def prompts(self, n: int, seed: int) -> list:
        """``n`` training problems drawn from the step's seed (the distribution of the splits, not their seeds)."""
        rng = np.random.default_rng(seed)
        return [arith.MathProblem(arith.question(a, b), str(a + b)) for a, b in arith.operands(rng, n)]

    def shard(self, prompts, rows: slice):
        return prompts[rows]

    def rollout(self, problems, policy, generator):
        """(completions, Trajectories) of every problem repeated ``group_size`` times."""
        cfg, device = self.cfg, next(self.mdm.parameters()).device
        texts = [p for p in task_prompts(problems, self.tokenizer, arith.NAME, chat=False)
                 for _ in range(cfg.group_size)]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True)
        recorder = TrajectoryRecorder(self.gen_length, policy.config.feature_topk)
        out = generate(self.mdm, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                       gen_length=self.gen_length, block_length=self.block_length, steps=self.gen_length,
                       scorer="policy", policy=policy, position_temperature=cfg.position_temperature,
                       temperature=cfg.token_temperature, generator=generator, recorder=recorder, topk=cfg.topk)
        completions = self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:].cpu(),
                                                  skip_special_tokens=True)
        return completions, recorder.trajectories()

    def rewards(self, completions, problems) -> np.ndarray:
        answers = [p.answer for p in problems for _ in range(self.cfg.group_size)]
        return arith.correct(completions, answers).astype(np.float64)

    def validation_set(self) -> list:
        return arith.make_problems(self.cfg.eval_puzzles, "validation")

    def validate(self, policy, problems) -> dict:
        result = evaluate_math(self.mdm, self.tokenizer, problems, task=arith.NAME, scorer="policy", policy=policy,
                               position_temperature=0.0, gen_length=self.gen_length, block_length=self.block_length,
                               batch_size=min(len(problems), 128), progress=False, topk=self.cfg.topk)
        return {"val_accuracy": result["accuracy"]}
