"""Supervised pretraining of the unmasking policy (``upo-fast pretrain-policy``), with DAgger rounds.

Round 0 rolls out the *reference* scorer (or, when ``init`` is a saved policy folder, that policy: a run can go on
from an earlier one, with a fresh buffer); every later round rolls out the current policy (greedy). The states of
those rollouts go into one buffer (DAgger's aggregation), and after each round the policy takes ``steps`` AdamW
steps on batches of buffered states. The target at a state is

* ``target="reference"``: the reference's own distribution there (cross-entropy to g_ref; for max_confidence
  the most confident candidate). The paper's runs start from such a policy; its code never released this step.
* ``target="oracle"`` (an extension, not in the paper): put the policy's mass on the candidates whose token the
  MDM would fill in *correctly*, read from the training puzzles' solutions: the loss is -log sum_{a correct} g(a).
  Only the states up to and including a rollout's first wrong commit are kept (after it the puzzle is lost,
  whatever the order), states with no correct candidate are skipped, and the buffer favours the states where the
  order decides: a wrong candidate among the five most confident, or a wrong commit. Validation and test puzzles
  never supply labels.

Rolling out the policy itself matters: a policy fitted to the reference's trajectories only drifts into states it
never saw, and imitation without those rounds lost solved rate in our runs (benchmarks/results/upo_sudoku9).
``candidate_topk=K`` makes the policy a re-ranker of the K most confident candidates (in training and sampling).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from upo_fast.assets import load_task_model
from upo_fast.ops import policy_divergence, position_log_softmax, topk_candidates
from upo_fast.tasks import get_task
from upo_fast.training.policy_init import INITS, VALIDATION_SEED, PolicyInit, make_policy, step_seed, validate
from upo_fast.training.references import get_reference
from upo_fast.training.rollout import Trajectories, rollout
from upo_fast.validation import field_check

_HARD_TOP = 5  # a state is "contested" when a wrongly filled candidate is among this many most confident ones
_FIELDS = ("hidden", "topk_probs", "confidence", "ref_logsumexp", "candidates", "correct")


@dataclass
class ImitationConfig:
    task: str = "sudoku9"
    reference: str = "max_confidence"
    target: str = "reference"  # or "oracle": mass on the correctly-filled candidates (see the docstring)
    model: str | None = None
    init: str = "anchor"  # fresh | copy | anchor (see TrainConfig.init) | a saved policy folder to go on from
    block_init: str = "copy"
    mlp_hidden: int = 128
    extra_blocks: int = 0  # see UnmaskingPolicyConfig
    policy_dim: int | None = None  # a narrower block (needs block_init="fresh"); see TrainConfig
    policy_body: str = "block"  # or "features": no transformer block; see TrainConfig
    topk: int = 5  # K of the topk reference
    candidate_topk: int | None = None  # the policy re-ranks the K most confident candidates only
    rounds: int = 1  # round 0: reference rollouts; rounds 1..: the policy's own greedy rollouts (DAgger)
    puzzles_per_round: int = 256
    rollout_batch: int = 64
    steps: int = 100  # AdamW steps after each round, on batches of buffered states
    batch_size: int = 128  # states per step
    keep_rate: float = 0.1  # fraction of the uncontested states that are buffered (all contested ones are)
    lr: float = 3e-4
    position_temperature: float = 1.0  # of the trained distribution g = softmax(scores / T)
    out_dir: str = "runs/policy-pretrain"
    seed: int = 0
    eval_puzzles: int = 200

    def validate(self) -> ImitationConfig:
        from upo_fast.tasks import TASKS, is_grid_task

        check = field_check(self)

        check(is_grid_task(self.task), "task", f"a grid task ({', '.join(TASKS)}, zebraHxA)")
        get_reference(self.reference)
        check(self.target in ("reference", "oracle"), "target", "'reference' or 'oracle'")
        for name in ("puzzles_per_round", "rollout_batch", "steps", "batch_size", "eval_puzzles", "topk"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "an int >= 1")
        check(isinstance(self.rounds, int) and self.rounds >= 0, "rounds", "an int >= 0")
        check(0 <= self.keep_rate <= 1, "keep_rate", "in [0, 1]")
        check(self.lr > 0, "lr", "> 0")
        check(self.position_temperature > 0, "position_temperature", "> 0")
        self.policy_init()  # init, block_init, policy_body, extra_blocks, candidate_topk, ...
        return self

    def policy_init(self) -> PolicyInit:
        """The initial policy's settings (anchor_tau: PolicyInit's default, as the GRPO trainer's). The policy
        chooses among ``candidate_topk``, else the Top-K reference's K, else (a loaded policy) its own K."""
        candidate_topk = self.candidate_topk
        if candidate_topk is None and get_reference(self.reference).top_k:
            candidate_topk = self.topk
        return PolicyInit(init=self.init, block_init=self.block_init, policy_body=self.policy_body,
                          mlp_hidden=self.mlp_hidden, policy_dim=self.policy_dim, extra_blocks=self.extra_blocks,
                          candidate_topk=candidate_topk)


class StateBuffer:
    """The aggregated states of all rounds: per state the policy's inputs [W, ...] and the labels of its candidates
    (hidden states kept in bfloat16 to halve the memory)."""

    def __init__(self):
        self.parts: dict[str, list[torch.Tensor]] = {name: [] for name in _FIELDS}
        self.data: dict[str, torch.Tensor] | None = None

    def add(self, traj: Trajectories, index: tuple, correct: torch.Tensor) -> None:
        values = dict(hidden=traj.hidden[index].bfloat16(), topk_probs=traj.topk_probs[index],
                      confidence=traj.confidence[index], ref_logsumexp=traj.ref_logsumexp[index],
                      candidates=traj.candidates[index], correct=correct[index])
        for name in _FIELDS:
            self.parts[name].append(values[name])
        self.data = None

    def __len__(self) -> int:
        return sum(len(t) for t in self.parts["candidates"])

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.data is None:
            self.data = {name: torch.cat(parts) for name, parts in self.parts.items()}
            self.parts = {name: [t] for name, t in self.data.items()}
        index = torch.randint(len(self), (n,), generator=generator)
        return {name: t[index] for name, t in self.data.items()}


def select_states(traj: Trajectories, solution: torch.Tensor, cfg: ImitationConfig, generator: torch.Generator):
    """Which recorded (step, row) states to buffer -> (index, correct [S, B, W] bool, first_error [B] bool).

    ``solution`` [B, W] holds the solution tokens. For the oracle target: states up to the first wrong commit;
    all contested ones (a wrong candidate among the most confident, or a wrong commit) and ``keep_rate`` of the
    rest. For the reference target: ``keep_rate`` of all states."""
    correct = traj.token == solution[None]
    picked_right = correct.gather(2, traj.chosen[..., None]).squeeze(-1) | ~traj.active  # [S, B]
    wrong = (~picked_right).int()
    failed = wrong.any(0)
    keep = traj.active & (torch.rand(traj.active.shape, generator=generator) < cfg.keep_rate)
    if cfg.target == "oracle":
        alive = traj.active & (torch.cumsum(wrong, 0) - wrong == 0)  # no wrong commit before this step
        confidence = traj.confidence.masked_fill(~traj.candidates, -1.0)
        top = confidence.topk(min(_HARD_TOP, confidence.shape[-1]), dim=-1).indices
        contested = (traj.candidates.gather(2, top) & ~correct.gather(2, top)).any(-1)
        solvable = (traj.candidates & correct).any(-1)
        keep = alive & solvable & (contested | (wrong > 0) | keep)
    return keep.nonzero(as_tuple=True), correct, failed


def imitation_loss(policy, batch: dict[str, torch.Tensor], cfg: ImitationConfig) -> torch.Tensor:
    """Mean over the buffered states of -log g(correct set) (oracle) or CE(g_ref, g) (reference), where
    g = softmax(scores / T) over the candidates."""
    confidence, candidates = batch["confidence"], batch["candidates"]
    if cfg.candidate_topk:
        candidates = topk_candidates(confidence, candidates, cfg.candidate_topk)
    if cfg.target == "oracle":
        right = candidates & batch["correct"]
        weight = right.any(-1).float()  # a re-ranker may have no correct candidate among its K: no target
    else:
        target, candidates = get_reference(cfg.reference).terms(candidates, confidence, batch["ref_logsumexp"],
                                                                K=cfg.topk)
        weight = candidates.any(-1).float()
    scores = policy(batch["hidden"].float(), candidates=candidates, topk_probs=batch["topk_probs"])
    if cfg.target == "oracle":
        # the torch path: the Triton log-softmax has no backward. A row with no correct candidate sums over all
        # of them instead (loss 0, weight 0), so no all -inf row puts NaN into the gradient.
        logg = position_log_softmax(scores, candidates, cfg.position_temperature, check=False, backend="torch")
        target_set = torch.where(weight[:, None] > 0, right, candidates)
        loss = -torch.logsumexp(logg.masked_fill(~target_set, float("-inf")), dim=-1)
    else:
        loss = policy_divergence(scores, candidates, target, "ce", cfg.position_temperature)
    return (loss * weight).sum() / weight.sum().clamp_min(1.0)


def _collect(mdm, task, policy, cfg: ImitationConfig, round_: int, buffer: StateBuffer, generator) -> dict:
    """Roll out (round 0: the reference; later: the policy, greedy) on fresh training puzzles into ``buffer``."""
    policy.eval()
    before, failed, total = len(buffer), 0, 0
    for b in range(-(-cfg.puzzles_per_round // cfg.rollout_batch)):
        n = min(cfg.rollout_batch, cfg.puzzles_per_round - b * cfg.rollout_batch)
        seed = step_seed(cfg.seed + 10_000, round_ * 1_000 + b)  # not the GRPO run's puzzles
        puzzles, solutions = task.make_puzzles(n, seed=seed)
        scorer = dict(scorer=get_reference(cfg.reference).scorer, feature_topk=policy.config.feature_topk,
                      topk=cfg.topk)
        if round_ > 0 or cfg.init not in INITS:  # a loaded policy is rolled out at once
            scorer = dict(policy=policy, position_temperature=0.0)
        _, traj = rollout(mdm, task.encode(puzzles), generator=torch.Generator().manual_seed(seed),
                          hidden_dtype=torch.bfloat16, **scorer)
        index, correct, wrong = select_states(traj, task.encode_solution(puzzles, solutions), cfg, generator)
        buffer.add(traj, index, correct)
        failed, total = failed + int(wrong.sum()), total + n
    return {"rollout": "policy" if "policy" in scorer else "reference", "rollout_failed": round(failed / total, 4),
            "states_added": len(buffer) - before, "states": len(buffer)}


def pretrain_policy(cfg: ImitationConfig, *, progress: bool = True) -> dict:
    """Fit a policy by DAgger rounds (see the module docstring). Saves the best policy on the validation puzzles
    to ``cfg.out_dir`` (the untrained one counts), the last one to ``cfg.out_dir/last``, and the per-round log."""
    cfg.validate()
    task = get_task(cfg.task)
    mdm = load_task_model(cfg.model, task).eval().requires_grad_(False)
    policy = make_policy(cfg.policy_init(), mdm)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    val = task.make_puzzles(cfg.eval_puzzles, seed=VALIDATION_SEED)
    out, generator, buffer = Path(cfg.out_dir), torch.Generator().manual_seed(cfg.seed), StateBuffer()
    log, started = [validate(mdm, policy, task, *val) | {"round": -1}], time.perf_counter()
    best = dict(log[0])
    policy.save_pretrained(out)
    for round_ in tqdm(range(cfg.rounds + 1), desc="pretrain policy (DAgger rounds)", disable=not progress):
        record = {"round": round_} | _collect(mdm, task, policy, cfg, round_, buffer, generator)
        if len(buffer) == 0:
            raise ValueError("no state was buffered: with target='oracle' every rollout was already wrong at its "
                             "first step, or keep_rate=0 left nothing; raise keep_rate or check the model")
        policy.train()
        losses = []
        for _ in range(cfg.steps):
            loss = imitation_loss(policy, buffer.sample(cfg.batch_size, generator), cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.detach())  # read once after the round: no host sync per step
        policy.eval()
        losses = torch.stack(losses).tolist()
        record |= {"loss": sum(losses) / len(losses), "first_loss": losses[0], "last_loss": losses[-1]}
        record |= validate(mdm, policy, task, *val)
        record["seconds"] = round(time.perf_counter() - started, 1)
        if record["val_solved"] > best["val_solved"]:
            best = dict(record)
            policy.save_pretrained(out)  # the policy kept is the best on validation (the untrained one included)
        policy.save_pretrained(out / "last")
        log.append(record)
        with open(out / "pretrain_log.jsonl", "w") as f:  # rewritten each round: a stopped run keeps its log
            f.writelines(json.dumps(r) + "\n" for r in log)
    summary = {"config": asdict(cfg), "best": best, **log[-1], "seconds": round(time.perf_counter() - started, 1)}
    (out / "pretrain_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
