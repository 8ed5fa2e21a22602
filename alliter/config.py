"""The one config of an RLOO trial: its fields (each a flag), the model presets and recipes it resolves, and its
bounds (the grids and a sweep's lists: alliter.sweep.grids; a model folder's checks: alliter.train.preflight).

Every field of `TrainConfig` is a command-line flag (`--group-size` for `group_size`), with the field's docstring as
its help (alliter.cli), and what else is its own written beside it by `option(...)`: its bounds and why (`Bounds`), its
choices, when it acts (`Acts`: a flag that would do nothing is refused), whether TensorBoard's HParams shows it. So a
knob is written once: adding one is a field, its docstring and its option; the trainer then reads it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Collection

from alliter.cli import AlliterError, InactiveFlag


BUNDLED_MODEL = Path(__file__).parent / "models" / "stories260k"
STUDY_TOKENIZER = "EleutherAI/gpt-neo-125M"
STUDY_LR = 1e-4

# name -> (model, tokenizer, lr). Anything else given to --model is a hub id or a local folder.
MODEL_PRESETS: dict[str, tuple[str, str | None, float]] = {
    "stories260k": (str(BUNDLED_MODEL), str(BUNDLED_MODEL), 1e-3),
    "tinystories-33m": ("roneneldan/TinyStories-33M", STUDY_TOKENIZER, STUDY_LR),
}

# generations of best_beta's window, the collapse rule's running window, and so the snapshots' spacing
DEFAULT_WINDOW = 200
DEFAULT_REWARD = "alliteration"  # the study's (alliter.train.reward; checked where it is loaded, before a trial starts)
EVAL_PROMPTS = 5  # with --prompts, an evaluation samples the first this many, as many stories of each
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # a model folder with one of these has a tokenizer
DEFAULT_KL_HORIZON = 300  # the KL-target controller's horizon in generations (README, "KL-target mode")

# name -> the knobs it sets where they are left out (TrainConfig.resolved); every one is also a flag
RECIPES: dict[str, dict[str, Any]] = {
    "study": {"optimizer": "sgd", "max_grad_norm": 0.0, "kl_reduction": "mean", "loss_reduction": "mean"},
    "trl": {"optimizer": "adamw", "max_grad_norm": 1.0, "kl_reduction": "sum", "loss_reduction": "sum"},
}
# a recipe's learning rate for a preset model, where it is not the preset's own (README, "Which recipe holds")
RECIPE_LRS: dict[str, dict[str, float]] = {"trl": {"stories260k": 1e-4, "tinystories-33m": 1e-5}}
TRL_DEFAULT_LR = 1e-6  # RLOOConfig's learning_rate: --recipe trl on any other model

# Bounds past which no value can be sane; the reason each refusal gives is beside the field it bounds (Bounds)
MAX_BETA = 1e4
MAX_KL_TARGET = 10.0
MIN_LR, MAX_LR = 1e-9, 1.0
MAX_ADAM_EPSILON = 1.0
MAX_DECAY_PER_GROUP = 0.01  # lr x weight_decay
MIN_GRAD_CLIP = 1e-3
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 10.0
MAX_GROUP_SIZE = 1024
MAX_GENERATIONS = 1_000_000
MAX_SEED = 2**32 - 1
MAX_EVAL_SAMPLES = 1000
MAX_THREADS = 1024
MAX_PROMPTS = 10_000
MAX_ENTROPY_COEF = 10.0
MAX_ENTROPY_TARGET = 15.0
MAX_DARLING_MEMORY = 1000
MAX_OVERUSE_CAP = 1000.0
# the reasons of bounds that are no one field's (a field's own are beside it, in its `bounds`)
PROMPTS_WHY = ("a trial samples one prompt a group (200 groups in 2000 generations): more are never used, and the "
               "file travels to every trial")
DECAY_WHY = ("AdamW shrinks every weight matrix by lr x weight_decay each group, whatever the reward: past 0.01 they "
             "lose 63% of their size every 100 groups (weight decay 1e6 at lr 1e-4 wrecks the model at its first group)")


def _shown(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value.is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:g}"


def within(name: str, value: float, low: float, high: float | None, low_open: bool = False, high_open: bool = False,
           why: str | None = None, why_low: str | None = None) -> None:
    """AlliterError in one line unless low <= value <= high (low < value with `low_open`, value < high with
    `high_open`; no upper bound for None), naming the bound and why (`why` past the upper, `why_low` under the
    lower)."""
    finite = isinstance(value, int) or math.isfinite(value)
    above = finite and (value > low if low_open else value >= low)
    if above and (high is None or (value < high if high_open else value <= high)):
        return
    low_side = f"> {_shown(low)}" if low_open else f">= {_shown(low)}"
    span = low_side + (f" and {'<' if high_open else '<='} {_shown(high)}" if high is not None else "")
    reason = None if not finite else why if above else why_low
    kind = "an integer" if isinstance(value, int) else "a finite number"
    raise AlliterError(f"{name} must be {kind} {span}, got {_shown(value)}" + (f" ({reason})" if reason else ""))


@dataclass(frozen=True)
class Bounds:
    """A knob's sane values, written beside its field: low <= value <= high (`low_open`, `high_open`: strictly; high
    None: no upper bound; a callable: the bound in this config, e.g. a floor under its beta), and `off` besides (the
    value that turns the knob off). `why` says why no value past the upper bound can be sane, `why_low` why none under
    the lower: the refusal gives it."""

    low: float
    high: float | Callable[["TrainConfig"], float | None] | None = None
    low_open: bool = False
    high_open: bool = False
    off: float | None = None
    why: str | None = None
    why_low: str | None = None

    def check(self, name: str, value: float, cfg: "TrainConfig | None" = None) -> None:
        """AlliterError in one line for a value out of bounds (`cfg`: the config a callable bound reads)."""
        if self.off is not None and value == self.off:
            return
        high = self.high(cfg) if callable(self.high) else self.high
        within(name, value, self.low, high, self.low_open, self.high_open, self.why, self.why_low)


@dataclass(frozen=True)
class Acts:
    """When a knob does anything, and what its refusal says where it does not (TrainConfig.check_knobs_act): a flag
    that would be ignored is refused."""

    when: Callable[["TrainConfig"], bool]
    refusal: str


def option(default: Any, bounds: Bounds | None = None, choices: tuple[str, ...] | None = None, acts: Acts | None = None,
         hparam: bool = False, **metadata: Any) -> Any:
    """A TrainConfig field with what is its own beside it: its bounds, its choices, when it acts, and whether
    TensorBoard's HParams dashboard shows it (a setting a sweep varies or a recipe sets)."""
    return field(default=default, metadata={"bounds": bounds, "choices": choices, "acts": acts, "hparam": hparam,
                                            **metadata})


def _adamw(cfg: "TrainConfig") -> bool:
    return cfg.effective("optimizer") == "adamw"


def _kl_term(cfg: "TrainConfig") -> bool:
    return cfg.beta > 0 or cfg.kl_target is not None


def _summed(cfg: "TrainConfig") -> bool:
    return cfg.recipe in RECIPES and cfg.effective("kl_reduction") == "sum"


ADAMW_ONLY = Acts(_adamw, "it is AdamW's, and the optimizer is SGD (the study's recipe); pass --optimizer adamw (or "
                          "--recipe trl), or leave it out")
TARGET_ONLY = Acts(lambda cfg: cfg.kl_target is not None,
                   "it is the KL-target controller's, and no KL target is set; pass --kl-target (a sweep: --kl-targets, "
                   "or --search --search-targets), or leave it out")
KL_TERM_ONLY = Acts(_kl_term, "at beta 0 (and no KL target) there is no KL term; pass a beta above 0, or leave it out")
SEED_BOUNDS = Bounds(0, MAX_SEED, why="the seeds torch, NumPy and CUDA all take")


MAX_PROMPTS_BYTES = 16 * 2**20  # a --prompts file: MAX_PROMPTS prompts of a whole max_length each fit many times


def read_prompts(path: str) -> str:
    """--prompts FILE: the file's prompts, one a line (a trailing newline and a byte-order mark aside); AlliterError
    in one line for a file that cannot be read, is too large, holds none or has an empty line (argparse's own errors
    print its whole usage)."""
    file = Path(path).expanduser()
    try:
        size = file.stat().st_size
        if size > MAX_PROMPTS_BYTES:
            raise AlliterError(f"--prompts: {path} is {size / 2**20:.0f} MB; a prompts file holds at most "
                               f"{MAX_PROMPTS_BYTES // 2**20} MB ({PROMPTS_WHY})")
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise AlliterError(f"--prompts: cannot read {path} ({type(err).__name__})") from None
    lines = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    if not text.strip():
        raise AlliterError(f"--prompts: {path} holds no prompt (give one prompt a line)")
    empty = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if empty:
        raise AlliterError(f"--prompts: line {empty[0]} of {path} is empty (give one prompt a line)")
    if len(lines) > MAX_PROMPTS:
        raise AlliterError(f"--prompts: {path} holds {len(lines)} prompts; at most {MAX_PROMPTS} ({PROMPTS_WHY})")
    return "\n".join(line.rstrip("\r") for line in lines)


@dataclass
class TrainConfig:
    beta: float = option(
        0.0,
        Bounds(0, MAX_BETA,
               why="100x the coarse grid's largest: past it the KL term outweighs any reward a text can earn by "
                   "orders of magnitude, and float32 gradients overflow"),
        hparam=True)
    """KL-penalty coefficient: reward = raw_reward + beta * (CE_policy - CE_ref); with --kl-target, its start."""
    kl_target: float | None = option(
        None,
        Bounds(0, lambda cfg: MAX_KL_TARGET * (cfg.max_length if _summed(cfg) else 1), low_open=True,
               why="nats per token: at 10 the policy has nothing left of the model it started from"),
        hparam=True)
    """Hold the per-token KL estimate (CE_ref - CE_policy, the study's KL term negated) at this value: beta becomes
    the state of Ziegler et al.'s controller, started at --beta and updated after every group; default: a fixed
    beta."""
    kl_horizon: int = option(
        DEFAULT_KL_HORIZON,
        Bounds(1, MAX_GENERATIONS,
               why="a horizon past a million generations moves beta by under a millionth of itself a group: the "
                   "controller does nothing"),
        acts=TARGET_ONLY)
    """The controller's horizon in generations: at its largest error (--kl-clip) beta moves by group_size /
    kl_horizon of itself per group (README, "KL-target mode", says why this default)."""
    kl_clip: float = option(0.2, Bounds(0, 1, low_open=True, high_open=True), acts=TARGET_ONLY)
    """The controller's error is clipped to [-kl_clip, kl_clip], as Ziegler et al.'s."""
    kl_min_beta: float | None = option(
        None,
        Bounds(0, lambda cfg: cfg.beta if cfg.kl_target is not None else None,
               why="the beta the controller starts at: a floor above it would jump there at the first group"),
        acts=TARGET_ONLY,
        hparam=True)
    """The controller never lowers beta below this (its start, --beta, makes beta rise only while the KL is above the
    target, and fall back to the start below it: no wind-down while the KL is still growing); default: no floor
    (Ziegler et al.'s)."""
    model: str = "stories260k"
    """Preset (stories260k, tinystories-33m), hub id or local folder of a causal LM."""
    tokenizer: str | None = None
    """Tokenizer hub id or folder; default: the preset's, else the model folder's, else EleutherAI/gpt-neo-125M."""
    lr: float | None = option(
        None,
        Bounds(MIN_LR, MAX_LR,
               why="a step of lr times a gradient whose norm is 10 to 1000 here throws the model away at once past 1",
               why_low="below 1e-9 a step changes no float32 weight (a weight of 0.02 resolves 2e-9)"),
        hparam=True)
    """Learning rate; default: the recipe's for the model (study: 1e-3 for stories260k, 1e-4 for the study's model
    and any other; trl: RECIPE_LRS)."""
    recipe: str = option("study", choices=tuple(RECIPES), hparam=True)
    """The algorithm: study (the reference study's RLOO, exactly) or trl (TRL 1.16's RLOOTrainer: AdamW, the
    gradient clipped at 1, the KL and the log-probabilities summed over the completion's tokens, the loss averaged
    over the group). A recipe sets the knobs below that are marked so and left out; a knob given wins."""
    optimizer: str | None = option(None, choices=("sgd", "adamw"), hparam=True)
    """sgd (the study's) or adamw (torch's AdamW: --adam-beta1, --adam-beta2, --adam-epsilon, --weight-decay);
    default: the recipe's."""
    adam_beta1: float = option(0.9, Bounds(0, 1, high_open=True), acts=ADAMW_ONLY)
    """AdamW's beta1 (the Hugging Face Trainer's and so TRL's default)."""
    adam_beta2: float = option(0.999, Bounds(0, 1, high_open=True), acts=ADAMW_ONLY)
    """AdamW's beta2 (the Hugging Face Trainer's and so TRL's default)."""
    adam_epsilon: float = option(
        1e-08,
        Bounds(0, MAX_ADAM_EPSILON, low_open=True,
               why="AdamW divides each step by sqrt(v) + epsilon, and a weight's gradient here is about 0.1: past 1 "
                   "the step shrinks to lr x gradient / epsilon, and at 1e300 the model never moves"),
        acts=ADAMW_ONLY)
    """AdamW's epsilon (the Hugging Face Trainer's and so TRL's default)."""
    weight_decay: float = option(0.0, Bounds(0), acts=ADAMW_ONLY)
    """AdamW's decoupled weight decay of the weight matrices (not of biases and norms, as the Hugging Face Trainer
    and nanoGPT); 0: none (TRL's default)."""
    max_grad_norm: float | None = option(
        None,
        Bounds(MIN_GRAD_CLIP, off=0.0,
               why_low="0 is no clip; a clip under 0.001 shrinks every step to almost nothing"),
        hparam=True)
    """Clip the gradient's global norm at this before each step (TRL, OpenRLHF and verl clip at 1.0); 0: no clip
    (the study's); default: the recipe's. The metrics keep the norm before (grad_norm) and after the clip."""
    normalize_advantages: bool = option(False, hparam=True)
    """Centre the group's advantages and divide them by their standard deviation + 1e-4 (TRL RLOO's option of this
    name; off in the study and in TRL)."""
    kl_loss: bool = option(False, acts=KL_TERM_ONLY, hparam=True)
    """beta x the KL estimate in the loss, with its gradient (GRPO's, verl's use_kl_loss), instead of in the reward
    (the study's and TRL RLOO's)."""
    kl_estimator: str = option("k1", choices=("k1", "k2", "k3"), acts=KL_TERM_ONLY, hparam=True)
    """The per-token KL estimate from the sampled token's log-ratio r = log pi - log pi_ref: k1 (r itself: the study's
    and TRL RLOO's), k2 (r^2 / 2) or k3 (exp(-r) - 1 + r, never negative: GRPO's)."""
    kl_reduction: str | None = option(None, choices=("mean", "sum"), acts=KL_TERM_ONLY, hparam=True)
    """A sample's KL from its tokens: mean (the study's: the per-token mean over the whole sample, prompt included)
    or sum (TRL's: the sum over the completion's tokens); default: the recipe's. A --kl-target is in these units."""
    loss_reduction: str | None = option(None, choices=("mean", "sum"))
    """The policy-gradient loss: mean (the study's: the sum over the group of advantage x the sample's mean token
    cross-entropy, prompt included) or sum (TRL's: the mean over the group of advantage x the sample's negative
    log-probability summed over the completion's tokens); default: the recipe's."""
    entropy_coef: float = option(
        0.0,
        Bounds(0, MAX_ENTROPY_COEF,
               why="10,000x verl's default (0.001) and 2,000x Skywork-OR1's largest (0.005): past it the bonus, up "
                   "to 10 x ln(vocabulary) nats (62 on the bundled model), outweighs the policy gradient of any "
                   "reward here and drives the policy to uniform noise"),
        hparam=True)
    """An entropy bonus: the loss minus this x the policy's entropy (of its whole next-token distribution, in nats,
    averaged over every completion token of the group: verl's entropy_coeff with loss_agg_mode token-mean, OpenRLHF's
    entropy_loss_coef), from the logits the scoring forward makes anyway; with --entropy-target, the coefficient's
    start. 0: none (the study's)."""
    entropy_target: float | None = option(
        None,
        Bounds(0, MAX_ENTROPY_TARGET, low_open=True,
               why="nats per token: the uniform distribution over 3.3 million tokens, more than any vocabulary "
                   "(Llama 3's 128,256: 11.8 nats)"),
        acts=Acts(lambda cfg: cfg.entropy_coef_step is not None,
                  "it is the adaptive entropy control's target, and no step is set; pass --entropy-coef-step "
                  "(Skywork-OR1's: 1e-4), or leave it out"),
        hparam=True)
    """Skywork-OR1's adaptive entropy control (arXiv 2505.22312; EntController in their verl): after every group the
    coefficient moves by --entropy-coef-step, up while the group's entropy (nats per token) is under this target, down
    otherwise, never below 0; the bonus acts only in a group after one under the target, as theirs. Default: a fixed
    coefficient."""
    entropy_coef_step: float | None = option(
        None,
        Bounds(0, MAX_ENTROPY_COEF, low_open=True,
               why="a step of the largest sane coefficient (10) a group"),
        acts=Acts(lambda cfg: cfg.entropy_target is not None,
                  "it is the adaptive entropy control's step, and no target is set; pass --entropy-target (nats per "
                  "token), or leave it out"),
        hparam=True)
    """The adaptive entropy coefficient's step per group (Skywork-OR1's delta_ent_coef, 1e-4 in their runs); with
    --entropy-target."""
    darling: bool = option(False, hparam=True)
    """DARLING's diversity-aware reward (Li et al. 2025, arXiv 2509.02534), with a lexical partition: each sample's raw
    reward times its diversity, the share of the other samples that are not alike it (two stories are alike when
    they share a topic word: one of 4+ letters that each uses at least twice; alliter.measures.darling_diversity).
    The KL term is added after; the evaluations keep the task's reward."""
    darling_memory: int = option(
        0,
        Bounds(0, MAX_DARLING_MEMORY,
               why="the stories of 1000 groups (10,000 at K=10), each compared with every sample of every group"),
        acts=Acts(lambda cfg: cfg.darling,
                  "it is DARLING's, and --darling is off; pass --darling, or leave it out"),
        hparam=True)
    """--darling compares each sample with the stories of this many groups before its own too (0: its group only), so
    that a topic the policy adopts across groups is seen."""
    overuse_cap: float = option(
        0.0,
        Bounds(1, MAX_OVERUSE_CAP, low_open=True, off=0.0,
               why="a word used 1000 times as often as by the unmodified model is a collapse; above it nothing is "
                   "damped"),
        acts=Acts(lambda cfg: cfg.eval_samples > 0 and cfg.snapshot_every > 0,
                  "it measures over-use against the unmodified model's stories of the evaluation at generation 0, "
                  "and evaluations are off; pass --eval-samples N (and --snapshot-every N), or leave it out"),
        hparam=True)
    """Damp the reward of a sample that uses an over-used word: its task reward (after --darling's factor) times
    min(1, cap / r), r how many times as often as the unmodified model the last --overuse-memory groups use the
    sample's most over-used word of 4+ letters (the rule's measure of a narrowed point, alliter.measures, against the
    unmodified model's stories of the evaluation at generation 0, 3 uses added); 0: off. Under the rule's
    --max-overuse (5), a word is damped before its points are called narrowed."""
    overuse_memory: int = option(
        20,
        Bounds(1, MAX_DARLING_MEMORY,
               why="the stories of 1000 groups (10,000 at K=10), counted again at every group"),
        acts=Acts(lambda cfg: cfg.overuse_cap > 0,
                  "it is the over-use damping's, and --overuse-cap is off; pass --overuse-cap, or leave it out"),
        hparam=True)
    """--overuse-cap counts a word's recent use over this many groups, this one included (a word the policy adopts
    across groups is seen, where a group of 10 shows it in a few stories)."""
    ref_sync_every: int = option(
        0,
        Bounds(0, MAX_GENERATIONS,
               why="a reset past a million generations never comes"),
        acts=KL_TERM_ONLY,
        hparam=True)
    """Reset the KL's reference to the policy every this many generations (at the group that reaches or crosses a
    multiple; TRL's sync_ref_model and ref_model_sync_steps, from TR-DPO, arXiv 2404.09656; ProRL's reference
    resets, arXiv 2505.24864); 0: never (the study's frozen reference). Fluency, the evaluations and the rule keep
    measuring against the unmodified model."""
    ref_sync_alpha: float = option(
        1.0,
        Bounds(0, 1, low_open=True,
               why="past 1 the reference would overshoot the policy, away from the model it started from",
               why_low="0 never moves the reference; leave --ref-sync-every out instead"),
        acts=Acts(lambda cfg: cfg.ref_sync_every > 0,
                  "it mixes the reference at its resets, and there are none; pass --ref-sync-every N, or leave it "
                  "out"),
        hparam=True)
    """A reset makes the reference alpha x policy + (1 - alpha) x reference (TRL's ref_model_mixup_alpha); 1: a copy
    of the policy (ProRL's hard reset)."""
    prompt: str = "Once upon a time"
    """The prompt every sample continues."""
    prompts: str | None = field(default=None, metadata={"flag_type": read_prompts, "metavar": "FILE"})
    """Prompts instead of --prompt: the flag reads a FILE of one prompt a line, and the config keeps its text. Each
    group samples one of them (its leave-one-out baseline is per prompt), in an order set by the seed; evaluations
    use the first 5 of them (EVAL_PROMPTS), as many stories of each."""
    reward: str = DEFAULT_REWARD
    """The reward of a text (alliter.train.reward): alliteration (the study's), rare-alliteration (each pair
    weighted by how rarely its letter starts a word), path/to/file.py:function or module:function (your own:
    f(texts: list[str]) -> list[float]; a sweep ships the file to its nodes)."""
    max_length: int = option(100, Bounds(2))
    """Tokens per sample, prompt included."""
    temperature: float = option(
        1.0,
        Bounds(MIN_TEMPERATURE, MAX_TEMPERATURE,
               why="above 10 sampling is uniform over the top-k",
               why_low="below 0.01 sampling is greedy, and float32 logits overflow"))
    """Sampling temperature."""
    top_k: int = option(50, Bounds(0))
    """Sample from the k most likely tokens (the library's default of 50)."""
    group_size: int = option(
        10,
        Bounds(2, MAX_GROUP_SIZE,
               why="a group is one batch of K samples, held at once in memory",
               why_low="leave-one-out needs others"))
    """Samples per update (K); each sample's baseline is the mean reward of the other K-1."""
    max_generations: int = option(
        2000,
        Bounds(1, MAX_GENERATIONS,
               why="140x the study's longest run of 7000: days on a GPU"))
    """Generations in the trial (the step counter counts generations, a group advances it by K)."""
    seed: int = option(0, SEED_BOUNDS, hparam=True)
    """Seed of Python's and torch's generators."""
    checkpoint_every: int = option(20, Bounds(1))
    """Checkpoint every this many groups (and at the end)."""
    snapshot_every: int = option(DEFAULT_WINDOW, Bounds(0))
    """Keep the policy's weights every this many generations (and at the end) in the trial's snapshots/, for `best_beta.py --export`; 0: none. Default: best_beta's window, so every point it can pick has its own snapshot."""
    device: str = "auto"
    """cuda, cpu, or auto (cuda when there is one)."""
    dtype: str = option("float32", choices=("float32", "bfloat16", "float64"))
    """float32, or bfloat16 (meant for a GPU)."""
    threads: int = option(
        0,
        Bounds(0, MAX_THREADS,
               why="torch threads of one trial"))
    """torch threads on the CPU; 0 keeps torch's default (a sweep's trial: its --cpus-per-trial). The samples depend on it: other threads sum in another order."""
    fast: bool = True
    """alliter's own decode loop and training forward (alliter.train.fast) where the architecture allows (Llama,
    GPT-Neo), else the library's; false: the library's generate and forward everywhere (same numbers, within float
    tolerance, and another draw of the samples)."""
    compile: bool = False
    """Compile the fast path's decode step and its scoring forward and backward with torch.compile (Inductor; on a
    CPU it needs a C++ compiler), for Llama in float32 or float64 (alliter.train.fast.compiled): every group has the
    trial's shapes, compiled once per process and kept in alliter's Inductor cache (~/.cache/alliter/inductor, or
    $TORCHINDUCTOR_CACHE_DIR), so a trial's first group takes seconds, minutes the first time on a machine. The same
    draw and the same numbers within float rounding (float64: to 1e-9), so a float32 trial's samples part from the
    default's after a while: off by default for that reason. Evaluations stay on the eager fast path."""
    eval_samples: int = option(
        50,
        Bounds(0, MAX_EVAL_SAMPLES,
               why="an evaluation is sampled in one batch; 50 stories measure fluency within about 0.03 nats, 1000 "
                   "within 0.007"))
    """Stories sampled from the policy to evaluate it, before the first update and at every snapshot (the points
    best_beta judges and exports); 0: no evaluations (best_beta then judges on the training groups)."""
    eval_seed: int = option(1234, SEED_BOUNDS)
    """Seed of the evaluations' sampling, a generator of their own: training is untouched, and every point of every
    trial is sampled with the same random numbers."""

    def validate(self) -> "TrainConfig":
        """Raise AlliterError, in one line, for a value the trainer cannot run with, or one past its field's bounds
        where no value can be sane; then refuse a knob that does nothing here."""
        for f in fields(self):
            value, bounds, choices = getattr(self, f.name), f.metadata.get("bounds"), f.metadata.get("choices")
            if bounds is not None and value is not None:
                bounds.check(f.name, value, self)
            if choices is not None and value is not None and value not in choices:
                raise AlliterError(f"{f.name} must be {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}")
        if self.kl_target is not None and self.beta <= 0:
            raise AlliterError("the KL-target controller multiplies beta: start it above 0 (--beta, e.g. 50)")
        if self.max_generations % self.group_size:
            lower = self.max_generations // self.group_size * self.group_size
            raise AlliterError(f"max_generations {self.max_generations} is not a whole number of groups of "
                               f"{self.group_size} (a group advances the counter by group_size): pass "
                               f"{' or '.join(str(g) for g in (lower, lower + self.group_size) if g > 0)}")
        if self.prompts is not None:
            if not self.prompt_list:
                raise AlliterError("prompts holds no prompt: give --prompts a file of one prompt a line")
            within("prompts", len(self.prompt_list), 1, MAX_PROMPTS, why=PROMPTS_WHY)
        if self.lr is not None and self.lr * self.weight_decay > MAX_DECAY_PER_GROUP:
            raise AlliterError(f"lr x weight_decay must be <= {MAX_DECAY_PER_GROUP:g}, got {_shown(self.lr)} x "
                               f"{_shown(self.weight_decay)} ({DECAY_WHY})")
        if self.compile and not self.fast:
            raise AlliterError("compile compiles the fast path: drop --fast false, or --compile")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise AlliterError(f"device must be auto, cpu or cuda, got {self.device!r}")
        self.check_knobs_act()
        return self

    def check_knobs_act(self, given: Collection[str] = ()) -> None:
        """A knob that does nothing in this configuration is refused, not ignored (its field's `acts`): one set to
        other than its default and its recipe's, or (`given`: the flags typed) given at all."""
        recipe = RECIPES.get(self.recipe, {})
        for f in fields(self):
            acts = f.metadata.get("acts")
            if acts is None:
                continue
            value = getattr(self, f.name)
            if (f.name in given or value not in (f.default, recipe.get(f.name, f.default))) and not acts.when(self):
                flag = f"--{f.name.replace('_', '-')}"
                raise InactiveFlag(flag, f"{flag} does nothing here: {acts.refusal}")

    def acts(self, name: str) -> bool:
        """Whether a knob does anything in this configuration (its field's `acts`; a knob without one always does)."""
        acts = FIELDS[name].metadata.get("acts")
        return acts is None or acts.when(self)

    def effective(self, name: str) -> Any:
        """A field's value as a trial runs it: the one given, else its recipe's (a field a recipe sets is None until
        given)."""
        value = getattr(self, name)
        return RECIPES[self.recipe][name] if value is None else value

    def resolved(self) -> "TrainConfig":
        """The config with the preset and the recipe applied: concrete model, tokenizer, lr and knobs (user values
        win). A local model folder's tokenizer is its own, never the hub's: without one, the tokenizer stays None and
        alliter.train.preflight.check_model, which checks the folders themselves, says so."""
        self.validate()
        model, tokenizer, lr = MODEL_PRESETS.get(self.model, (self.model, None, STUDY_LR))
        if self.recipe in RECIPE_LRS:
            lr = RECIPE_LRS[self.recipe].get(self.model, lr if self.model in MODEL_PRESETS else TRL_DEFAULT_LR)
        local = Path(model).expanduser()
        if tokenizer is None and self.tokenizer is None:
            if local.is_dir():  # its own, if it has one (alliter.train.preflight.check_model says when it has not)
                tokenizer = str(local) if any((local / f).exists() for f in TOKENIZER_FILES) else None
            else:
                tokenizer = STUDY_TOKENIZER  # a hub id without a tokenizer of its own: the study's, from the hub
        return dataclasses.replace(
            self.with_recipe(), model=model, tokenizer=self.tokenizer or tokenizer, lr=self.lr if self.lr is not None else lr
        ).validate()

    def with_recipe(self) -> "TrainConfig":
        """The config with its recipe's knobs filled in where they are left out (a trial's config.json of before
        recipes has none: the study's)."""
        return dataclasses.replace(self, **{name: self.effective(name) for name in RECIPES[self.recipe]})

    def describe_recipe(self) -> str:
        """The update in words, for the sweep's header, the report and a model card (a resolved config)."""
        optimizer = ("SGD" if self.optimizer == "sgd" else
                     f"AdamW (betas {self.adam_beta1:g}/{self.adam_beta2:g}, eps {self.adam_epsilon:g}, weight decay "
                     f"{self.weight_decay:g})")
        where = "the loss" if self.kl_loss else "the reward"
        reduction = ("its per-token mean over the sample, prompt included" if self.kl_reduction == "mean" else
                     "summed over the completion's tokens")
        loss = ("the sum over the group of advantage x the mean token cross-entropy" if self.loss_reduction == "mean"
                else "the mean over the group of advantage x the completion's summed negative log-probability")
        given = [f"{k}={getattr(self, k)}" for k, v in RECIPES[self.recipe].items() if getattr(self, k) != v]
        lr = "the preset's learning rate" if self.lr is None else f"lr {self.lr:g}"
        clip = f"the gradient norm clipped at {self.max_grad_norm:g}" if self.max_grad_norm else "no gradient clip"
        return (f"recipe {self.recipe}{' (TRL 1.16 RLOOTrainer)' if self.recipe == 'trl' else ''}: {optimizer} at {lr}, {clip}, "
                f"the KL ({self.kl_estimator}) in {where}, {reduction}; the loss {loss}"
                + ("; advantages normalised" if self.normalize_advantages else "")
                + "".join(f"; {remedy}" for remedy in self.remedies())
                + (f" (knobs given: {', '.join(given)})" if given else ""))

    def remedies(self) -> list[str]:
        """The remedies against a reward hack that are on, in words (describe_recipe)."""
        out = []
        if self.entropy_target is not None:
            out.append(f"an entropy bonus, its coefficient from {self.entropy_coef:g} moved by "
                       f"{self.entropy_coef_step:g} a group toward an entropy of {self.entropy_target:g} nats per "
                       "token (Skywork-OR1)")
        elif self.entropy_coef:
            out.append(f"an entropy bonus of {self.entropy_coef:g} x the policy's token-mean entropy")
        if self.darling:
            memory = f" and the {self.darling_memory} groups before" if self.darling_memory else ""
            out.append(f"each raw reward x its diversity among its group{memory} (DARLING, topic words)")
        if self.overuse_cap:
            out.append(f"each reward x min(1, {self.overuse_cap:g} / the over-use of its most over-used word over the "
                       f"last {self.overuse_memory} groups)")
        if self.ref_sync_every:
            alpha = self.ref_sync_alpha
            to = "the policy" if alpha == 1 else f"{alpha:g} x the policy + {1 - alpha:g} x itself"
            out.append(f"the KL's reference reset to {to} every {self.ref_sync_every} generations")
        return out

    @property
    def prompt_list(self) -> list[str]:
        """The prompts a group samples from: --prompts' lines, else --prompt alone."""
        return [p for p in self.prompts.split("\n") if p] if self.prompts is not None else [self.prompt]

    @property
    def eval_prompts(self) -> list[str]:
        return self.prompt_list[:EVAL_PROMPTS]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


FIELDS = {f.name: f for f in fields(TrainConfig)}
HPARAMS = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("hparam"))
"""The settings TensorBoard's HParams dashboard shows a trial by: what a sweep varies and a recipe sets."""


def check_bounds(name: str, value: float) -> None:
    """A value of a TrainConfig field within its bounds (a seed of --seeds, before any config is made)."""
    FIELDS[name].metadata["bounds"].check(name, value)


def check_value(knob: str, value: float, cfg: TrainConfig | None = None) -> None:
    """A value of what a sweep varies (beta, or kl_target), within its bounds in `cfg`'s KL units (a target: nats per
    token for the study's recipe, per completion for TRL's)."""
    units = TrainConfig() if cfg is None else TrainConfig(recipe=cfg.recipe, kl_reduction=cfg.kl_reduction,
                                                           max_length=cfg.max_length)
    dataclasses.replace(units, **({"beta": value} if knob == "beta" else {"beta": 1.0, "kl_target": value})).validate()


def check_given(given: Collection[str]) -> None:
    """Flags that cannot go together are refused, rather than one of them ignored."""
    if "prompt" in given and "prompts" in given:
        raise AlliterError("--prompt and --prompts both given: --prompts FILE replaces --prompt; pass one of them")


def base_model_here(model: str) -> str:
    """A trial's base model as this machine reaches it: the bundled model wherever the trial's machine had it
    installed (the path in its config.json is that machine's), any other folder or hub id as it is."""
    if not Path(model).exists() and Path(model).name == BUNDLED_MODEL.name:
        return str(BUNDLED_MODEL)
    return model
