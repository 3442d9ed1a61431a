"""Configuration: plain dataclasses, loaded from TOML (nested dataclasses are sub-tables) and `key=value`
overrides. An unknown key is refused with the nearest valid one; values are converted to the declared type,
never executed (no exec, no eval)."""

import dataclasses
import difflib
import importlib
import sys
import types
import typing
from pathlib import Path
from typing import Any, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A config file or override that does not fit its dataclass."""


def optional_import(module: str, package: str, extra: str):
    """`module` of an optional dependency, or one line naming the minichord extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f'{package} is not installed: pip install "minichord[{extra}]" (or {package})') from None


DEVICES = ("auto", "cpu", "cuda")  # minichord/device.py: auto = cuda if available, else cpu
DTYPES = ("fp32", "bf16")  # bf16: autocast over fp32 master weights (minichord/device.py)
DIST_BACKENDS = ("auto", "gloo", "nccl")  # minichord/distributed.py: auto = NCCL on CUDA, gloo on the CPU
REWARDS = ("auto", "exact", "math", "math-verify")  # minichord/data.py rewards(); auto: math for HF, else exact
CATALOGUE = tomllib.loads(Path(__file__).with_name("catalogue.toml").read_text(encoding="utf-8"))  # conventions, bugs
CONVENTIONS = tuple(n for name, c in CATALOGUE["convention"].items() for n in (name, c.get("also")) if n)  # + aliases
EXPERT_WEIGHTINGS = ("uniform", "phi", "is", "luffy")  # the expert-token loss (minichord/losses.py)
AGGREGATIONS = (*CATALOGUE["aggregation"], "joint")  # how token losses are averaged (minichord/losses.py)
SINGLETONS = ("zero", "official")  # the advantage of a group of one
STDS = ("unbiased", "biased", "none")  # the group std that divides advantages (none: A = R - mean)


@dataclasses.dataclass
class ModelConfig:
    """A Qwen2-family decoder (minichord's names for Qwen2's sizes)."""

    vocab_size: int = 256
    dim: int = 128  # hidden size
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2  # grouped-query attention: n_heads % n_kv_heads == 0
    ffn_dim: int = 384  # SwiGLU intermediate size
    max_seq_len: int = 160
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    qkv_bias: bool = True  # Qwen2 has biases on q, k, v (not on o)
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        validate(self, {"[1, inf)": "vocab_size dim n_layers n_heads n_kv_heads ffn_dim max_seq_len",
                        "(0, inf)": "rope_theta norm_eps"})
        if self.dim % self.n_heads:
            raise ConfigError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ConfigError(f"head dim {self.dim // self.n_heads} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


@dataclasses.dataclass
class SamplerConfig:
    """How rollouts are drawn. greedy=True ignores temperature/top_k/top_p."""

    max_new_tokens: int = 96
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    greedy: bool = False
    compile: Optional[bool] = None  # true: torch.compile (CPU) / CUDA graph (GPU); none: GPU graph only; false: eager

    def __post_init__(self) -> None:  # temperature 0 only with greedy=true (which ignores it)
        validate(self, {"[1, inf)": "max_new_tokens", "[0, inf)": "top_k" + " temperature" * (self.greedy is True),
                        "(0, inf)": "temperature" * (self.greedy is not True), "(0, 1]": "top_p"})


def validate(cfg: Any, ranges: dict[str, str]) -> None:
    """Check every field's type (a bool is not an int; a float is finite) and ranges {"[0, 1)": "names"}."""
    ranges = {name: interval for interval, names in ranges.items() for name in names.split()}
    for name, tp in _field_types(type(cfg)).items():
        value, bounds = getattr(cfg, name), ranges.get(name, "(-inf, inf)")  # open: NaN and inf never fit
        if typing.get_origin(tp) in (typing.Union, types.UnionType):  # Optional[X]: None, or an X
            tp = type(None) if value is None else next(a for a in typing.get_args(tp) if a is not type(None))
        if tp not in (bool, int, float, str):
            continue
        if tp is int and isinstance(value, int) and value > 2**32 - 1 and bounds.endswith("inf)"):  # fits 32 bits
            bounds = bounds.replace("inf)", f"{2**32 - 1}]")
        lo, hi = bounds[1:-1].split(", ")
        ok = isinstance(value, (int, float) if tp is float else tp) and (tp is bool or not isinstance(value, bool))
        if ok and tp in (int, float):
            ok = (float(lo) < value or (bounds[0] == "[" and value == float(lo))) and \
                (value < float(hi) or (bounds[-1] == "]" and value == float(hi)))
        if not ok:
            kind = {bool: "true or false", int: "an integer", float: "a finite number"}.get(tp, f"a {tp.__name__}")
            rule = f" in {bounds}" if hi != "inf" else f" >= {lo}" if bounds[0] == "[" else f" > {lo}"
            raise ConfigError(f"{name}={value!r}: must be {kind}{'' if tp in (bool, str) else rule}")


_BOOLS = {**dict.fromkeys(("1", "true", "yes", "on"), True), **dict.fromkeys(("0", "false", "no", "off"), False)}


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a TOML value or a `--set` string to the field type `tp`."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:  # Optional[X] / X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _convert(value, next(a for a in typing.get_args(tp) if a is not type(None)), where)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (str,)
        items = value.split(",") if isinstance(value, str) else list(value)
        return origin(_convert(v.strip() if isinstance(v, str) else v, inner, where) for v in items)
    try:
        if tp is bool:
            return value if isinstance(value, bool) else _BOOLS[value.lower()]
        if isinstance(value, bool) or (tp is str and not isinstance(value, str)):
            raise ValueError(value)
        if tp is int:  # "12" exactly, "1e3" via float; never 2.5
            number = float(value) if isinstance(value, str) and not value.strip().lstrip("+-").isdigit() else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError(value)
            return int(number)
        if tp in (float, str):
            return tp(value)
    except (TypeError, ValueError, OverflowError, KeyError, AttributeError):
        raise ConfigError(f"{where}: cannot read {value!r:.80} as {tp.__name__}") from None
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from a (nested) dict, refusing unknown keys by name."""
    types = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in types:
            raise ConfigError(f"{where}: {unknown_name('key', key, types)}")
        tp = types[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a table, got {value!r}")
            kwargs[key] = from_dict(tp, value, f"{where}.{key}")  # the table's missing keys: tp's defaults
        else:
            kwargs[key] = _convert(value, tp, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def unknown_name(kind: str, name: str, valid) -> str:
    """The refusal of a typo, with the nearest valid name: unknown <kind> 'x'; did you mean 'y'? valid <kind>s: ..."""
    near = difflib.get_close_matches(name, list(valid), 1, 0.0)[0]
    return f"unknown {kind} {name!r}; did you mean {near!r}? valid {kind}s: {', '.join(valid)}"


def to_dict(cfg: Any) -> dict[str, Any]:
    """The inverse of `from_dict` (None values are dropped, since TOML has no null)."""
    return dataclasses.asdict(cfg, dict_factory=lambda items: {k: list(v) if isinstance(v, tuple) else v
                                                               for k, v in items if v is not None})


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` / `section.key=value` strings onto a nested dict (copied)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        *parents, leaf = key.strip().split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a table")
        node[leaf] = value.strip()
    return out


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Any:
    """`base` dict (e.g. a method preset) <- TOML file <- `key=value` overrides -> `cls`."""
    data: dict[str, Any] = dict(base or {})
    where = cls.__name__
    if path is not None:
        path = Path(path)
        try:
            file_data = tomllib.loads(path.read_bytes().decode())  # what tomllib.load does
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ConfigError(f"{path}: invalid TOML: {str(e) or 'nested too deeply'}") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
        where = str(path)
        for k, v in file_data.items():
            data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    return from_dict(cls, apply_overrides(data, overrides or []), where)


def one_of(cfg: Any, **allowed: tuple[str, ...]) -> None:
    """Refuse a field whose value is not among its allowed strings."""
    for key, values in allowed.items():
        if getattr(cfg, key) not in values:
            raise ConfigError(f"{key}={getattr(cfg, key)!r}: must be one of {', '.join(map(str, values))}")


@dataclasses.dataclass(frozen=True)  # hashable: `minichord check` searches sets of rules
class LossConfig:
    """The `loss` table: rewards -> advantages (std, singleton, expert_in_group), tokens -> coefficients
    (aggregation), token losses (the rest). Formulas: minichord/losses.py; presets: minichord/methods.py."""

    eps_low: float = 0.2  # PPO clip range [1 - eps_low, 1 + eps_high]
    eps_high: float = 0.2
    dual_clip: Optional[float] = None  # c > 1 bounds the loss of A < 0 tokens at -A c; None = off
    log_ratio_clamp: float = 20.0  # r = exp(clamp(logp - old_logp, -c_r, c_r)); inf: no clamp
    expert_weighting: str = "uniform"  # uniform (SFT) | phi (CHORD-phi) | is (SFT-IS) | luffy (both LUFFY terms)
    luffy_gamma: float = 0.1  # LUFFY's policy shaping p / (p + gamma)
    entropy_coef: float = 0.0  # on-policy entropy bonus (0 = off)
    kl_coef: float = 0.0  # k3 KL penalty to the initial model (0 = off)
    aggregation: str = "token-mean"  # one of AGGREGATIONS (joint: one mean over both sides, no mu: LUFFY)
    sft_aggregation: Optional[str] = None  # the SFT term's, when it differs (None: `aggregation`)
    singleton: str = "zero"  # a group of one: zero (A = 0) | official (A = R / (1 + 1e-6))
    std: str = "unbiased"  # A = (R - mean) / (std + std_eps): unbiased (G - 1) | biased (G) | none (A = R - mean)
    std_eps: float = 1e-6
    expert_in_group: bool = False  # LUFFY: G - 1 rollouts + the prompt's expert trace (reward 1) form a group

    def __post_init__(self) -> None:
        one_of(self, expert_weighting=EXPERT_WEIGHTINGS, aggregation=AGGREGATIONS, singleton=SINGLETONS, std=STDS,
               sft_aggregation=(None, *AGGREGATIONS[:-1]) if self.aggregation != "joint" else (None,))
        validate(self, {"[0, 1)": "eps_low", "[0, inf)": "eps_high entropy_coef kl_coef", "(1, inf)": "dual_clip",
                        "(0, inf)": "luffy_gamma std_eps", "(0, inf]": "log_ratio_clamp"})
        if self.expert_in_group != (self.expert_weighting == "luffy"):
            raise ConfigError(f"expert_in_group={self.expert_in_group} with expert_weighting={self.expert_weighting!r}"
                              ": LUFFY's token losses and its mixed groups go together (the luffy method sets both)")

    @property
    def luffy(self) -> bool:  # LUFFY's pair of token losses (minichord/losses.py)
        return self.expert_weighting == "luffy"


@dataclasses.dataclass
class TrainConfig:
    """One training run: `minichord train --method NAME` loads it as in methods.build_stages."""

    seed: int = 0
    steps: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_weight_growth: float = 2.0  # a step that multiplies the weights' norm by more has diverged (trainer.py)
    # batch: B prompts x G samples on-policy + E expert demonstrations
    prompts_per_step: int = 8
    group_size: int = 8
    experts_per_step: int = 16
    ppo_epochs: int = 1  # updates per rollout batch; > 1 makes ratios and clipping real
    minibatches: int = 1
    # global mu(step): warm-up W, cosine decay D as shares of `steps` (official W=0, D=200, scaled), peak, valley
    mu_warmup_frac: float = 0.0
    mu_decay_frac: float = 0.0
    mu_peak: float = 0.1
    mu_valley: float = 0.1
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)  # the `loss` table: --set loss.eps_high=0.28
    convention: str = "paper"  # a preset of `loss` fields: paper | official (minichord/methods.py, CONVENTIONS)
    # data: the embedded toy task unless JSONL files are given (minichord/data.py: toy, GSM8K, MATH, chat rows)
    prompts_file: str = ""
    experts_file: str = ""
    eval_file: str = ""  # held-out prompts, FILE[,FILE...] (split = file stem); default: the toy's splits, none for HF
    reward: str = "auto"  # REWARDS
    n_rl_prompts: int = 1000
    n_expert: int = 256
    n_test: int = 200
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    eval_every: int = 40
    samples_every: int = 0  # samples.jsonl at each evaluation, and every k steps between them (0: evaluations only)
    save_every: int = 40
    init: str = ""  # a minichord checkpoint or a Hugging Face model directory; empty = the cached toy base model
    device: str = "auto"  # auto | cpu | cuda (minichord/device.py)
    dtype: str = "fp32"  # fp32 | bf16 (autocast over fp32 weights; the loss math stays fp32)
    activation_checkpointing: bool = False  # recompute each layer in backward (torch.utils.checkpoint)
    micro_batch_seqs: int = 0  # sequences per forward/backward (gradient accumulation); 0 = all at once
    dist_backend: str = "auto"  # data-parallel ranks under torchrun (minichord/distributed.py): DIST_BACKENDS
    fsdp: bool = False  # under torchrun: weights, gradients and AdamW moments in shards over the ranks (FSDP2)

    def __post_init__(self) -> None:
        one_of(self, reward=REWARDS, convention=CONVENTIONS, device=DEVICES, dtype=DTYPES, dist_backend=DIST_BACKENDS)
        validate(self, {"[1, inf)": "steps prompts_per_step ppo_epochs minibatches eval_every save_every",
                        "[0, inf)": "micro_batch_seqs experts_per_step n_rl_prompts n_expert n_test weight_decay "
                                    "samples_every", "(0, inf)": "lr grad_clip max_weight_growth",
                        "[0, 1]": "mu_warmup_frac mu_decay_frac mu_peak mu_valley",
                        "[2, inf)": "group_size", "[0, 4294967295]": "seed"})
        if self.fsdp and self.minibatches > 1:  # a rank may hold no sequence of a mini-batch; FSDP2 needs them all
            raise ConfigError(f"fsdp=true needs minibatches=1 (got {self.minibatches}): every rank must run as many "
                              f"forward/backward passes")
        if (total := self.mu_warmup_frac + self.mu_decay_frac) > 1:  # shares of the same steps
            raise ConfigError(f"mu_warmup_frac + mu_decay_frac = {total}: must be <= 1")
