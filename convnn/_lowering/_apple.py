"""Routing tables for the Apple GPU plugins: which convolutions each one must not see.

Apple GPUs run JAX through third-party PJRT plugins, each with its own convolution bugs, and
many of those bugs kill the process (``LLVM ERROR``, failed assertions) instead of raising. So
the choice is made from a table, before tracing, from the configuration and the plugin's
installed version, never by trying a convolution and catching an error. A routed convolution
goes to the ``"decomposed"`` strategy (pad, slice, matmul / multiply-add), whose forward pass and
gradients contain no convolution primitive at all, so the plugin never sees the risky form.

A *rule* names a plugin, the versions it applies to (inclusive bounds; ``None`` = open), which
configurations it catches, the strategy they go to and why (with the public report). Unknown
versions (a plugin built from source, or ``convnn.lowering("auto", backend=...)`` on a machine
without the plugin) are assumed affected by every rule, except where convnn's own requirements
pin the version (:data:`ASSUMED_VERSIONS`).

What is known (public issue trackers and release notes), and what follows:

* **jax-metal** (Apple, platform ``METAL``): unmaintained; 0.1.1 is the last release. It needs
  ``jaxlib>=0.4.34`` with ``jax==jaxlib``; the last combination reported working is 0.5.0
  (from 0.5.1 every op fails with ``default_memory_space is not supported``). convnn needs
  jax >= 0.5.0, which only jax-metal 0.1.1 supports, so that is the version assumed.

  - 3-D convolutions abort the process (``LLVM ERROR: Failed to infer result type(s)``,
    jax-ml/jax#21554): every 3-D convolution is decomposed.
  - grouped convolutions, and ``batch_group_count`` (which JAX's autodiff emits for the weight
    gradient of every grouped convolution) have no working report: ``groups > 1`` is decomposed.
  - input (lhs) dilation failed before 0.0.7 (jax-ml/jax#19369); that is every strided
    transposed convolution and the input gradient of every strided convolution: decomposed
    for versions up to 0.0.6 (which cannot load convnn's jax, but the table says so).
  - bfloat16 is unsupported: bfloat16 convolutions compute in float32 (inputs cast up, the
    result cast back), through the internal strategies ``"xla-float32"`` /
    ``"decomposed-float32"`` (``_float32.py``).
  - float64 is unsupported too (keep ``jax_enable_x64`` off); not routed.

* **jax-mps** (platform ``mps``, runs StableHLO on MLX; each release pins one jax minor):

  - ``batch_group_count > 1`` was refused before 0.10.3 (jax-mps#158): the weight gradient of
    every grouped convolution fails, so ``groups > 1`` is decomposed up to 0.10.2.
  - MLX's Metal kernels computed wrong input gradients for grouped convolutions with stride
    (ml-explore/mlx#3800: grouped convolutions with input dilation, which is what the input
    gradient of a strided convolution and a strided transposed convolution are); very likely
    wrong in jax-mps up to 0.10.11: grouped convolutions with a stride or input dilation are
    decomposed up to 0.10.11.

* **metaljax** (platform ``metal``, jax 0.11.x, also runs the program on MLX; it ships its own
  MLX 0.32.0 since 0.11.6, and required ``mlx>=0.32`` before): its release notes list strided,
  dilated, grouped and transposed convolutions and their gradients as verified against the CPU
  backend, and float64 as unsupported. The MLX Metal bug above was fixed in MLX around the
  0.32.0 release; whether the bundled build carries the fix is not documented, so grouped
  convolutions with a stride or input dilation are routed conservatively as on jax-mps.

* **metal-pjrt** (``metal-pjrt-plugin``, platform ``mtl``, built from source): XLA's own GPU
  compiler generates the kernels, translated to Metal. No convolution failure is reported and
  there is no release to pin, so nothing is routed (a row is easy to add once a failure is
  reported; ``python -m convnn`` is the check to run).

* **jax-metallib** (platform ``mps`` as well, MPSGraph): detected by :func:`convnn.backend_info`
  but without a table; its convolutions go to XLA's convolution.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp

from convnn._lowering._config import ConvConfig, Decision, Target

__all__ = [
    "APPLE_BACKENDS",
    "ASSUMED_VERSIONS",
    "FLOAT32_RULES",
    "RULES",
    "Rule",
    "active_rules",
    "in_range",
    "on_apple",
    "parse_version",
    "policy",
    "route",
]

#: The backend names of the Apple GPU plugins (keys of ``convnn.lowering``'s ``backend=``).
APPLE_BACKENDS = ("jax-metal", "jax-mps", "metaljax", "metal-pjrt")

#: Version assumed when the plugin's package metadata is missing. jax-metal: convnn requires
#: jax >= 0.5.0, which only jax-metal 0.1.1 accepts. Others: unknown, so every rule applies.
ASSUMED_VERSIONS: dict[str, str | None] = {
    "jax-metal": "0.1.1",
    "jax-mps": None,
    "metaljax": None,
    "metal-pjrt": None,
}


def _strided_or_input_dilated(cfg) -> bool:
    return any(s > 1 for s in cfg.spec.stride) or any(d > 1 for d in cfg.spec.input_dilation)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row of a plugin's routing table.

    Attributes:
      plugin: the backend name (``"jax-metal"``, ``"jax-mps"``, ...).
      first: first affected version (inclusive), or ``None`` for every earlier one.
      last: last affected version (inclusive), or ``None`` for every later one.
      what: a short description of the configurations caught.
      catches: ``ConvConfig -> bool``.
      why: the failure, with the public report.
      strategy: where caught configurations go.
    """

    plugin: str
    first: str | None
    last: str | None
    what: str
    catches: Callable[[ConvConfig], bool]
    why: str
    strategy: str = "decomposed"

    def applies(self, version: str | None) -> bool:
        """Whether the rule covers ``version`` (``None``: unknown, assumed covered)."""
        return version is None or in_range(version, self.first, self.last)


RULES: tuple[Rule, ...] = (
    Rule("jax-metal", None, None, "3-D convolutions", lambda cfg: cfg.ndim == 3,
         "abort the process: LLVM ERROR: Failed to infer result type(s) (jax-ml/jax#21554)"),
    Rule("jax-metal", None, None, "groups > 1 (and so batch_group_count in the weight gradient)",
         lambda cfg: cfg.groups > 1,
         "no working report of feature_group_count or batch_group_count on jax-metal"),
    Rule("jax-metal", None, "0.0.6", "stride > 1 or input dilation (lhs dilation)",
         _strided_or_input_dilated,
         "lhs dilation failed to legalize before jax-metal 0.0.7 (jax-ml/jax#19369)"),
    Rule("jax-mps", None, "0.10.2", "groups > 1 (batch_group_count in the weight gradient)",
         lambda cfg: cfg.groups > 1,
         "batch_group_count > 1 was refused before jax-mps 0.10.3 (jax-mps#158)"),
    Rule("jax-mps", None, "0.10.11", "groups > 1 with stride > 1 or input dilation",
         lambda cfg: cfg.groups > 1 and _strided_or_input_dilated(cfg),
         "MLX's Metal kernels gave wrong input gradients for grouped strided convolutions "
         "(ml-explore/mlx#3800)"),
    Rule("metaljax", None, None, "groups > 1 with stride > 1 or input dilation",
         lambda cfg: cfg.groups > 1 and _strided_or_input_dilated(cfg),
         "runs on MLX, whose Metal kernels gave wrong input gradients for grouped strided "
         "convolutions (ml-explore/mlx#3800); the fix in the bundled MLX is unverified"),
)

#: Plugins whose device has no bfloat16: such convolutions compute in float32.
FLOAT32_RULES: tuple[Rule, ...] = (
    Rule("jax-metal", None, None, "bfloat16 inputs or preferred_element_type",
         lambda cfg: _uses_bfloat16(cfg), "jax-metal does not support bfloat16",
         strategy="float32"),
)


def _uses_bfloat16(cfg) -> bool:
    bf16 = jnp.dtype(jnp.bfloat16)
    pet = cfg.spec.preferred_element_type
    return jnp.dtype(cfg.dtype) == bf16 or (pet is not None and jnp.dtype(pet) == bf16)


def parse_version(version: str) -> tuple[tuple[int, ...], int]:
    """A sortable key: the release numbers, then 0 for a pre-release (``.dev``, ``rc``) else 1.

    Example:
      >>> parse_version("0.10.11.dev845") < parse_version("0.10.11") < parse_version("0.10.12")
      True
    """
    release: list[int] = []
    pre = 1
    for piece in version.strip().lstrip("vV").split("+")[0].split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if digits == "" or digits != piece:
            if digits:
                release.append(int(digits))
            pre = 0 if any(t in piece for t in ("dev", "a", "b", "rc")) else pre
            break
        release.append(int(digits))
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    return tuple(release), pre


def in_range(version: str, first: str | None, last: str | None) -> bool:
    """Whether ``first <= version <= last`` (inclusive; pre-releases of ``last`` included)."""
    key = parse_version(version)
    if first is not None and key < parse_version(first):
        return False
    return last is None or key <= parse_version(last)


def active_rules(plugin: str, version: str | None) -> list[Rule]:
    """The rules of ``plugin`` that cover ``version``, routing and float32 ones."""
    return [r for r in (*RULES, *FLOAT32_RULES) if r.plugin == plugin and r.applies(version)]


def route(cfg, plugin: str, version: str | None) -> str:
    """The strategy for one convolution on an Apple plugin at a given version.

    Args:
      cfg: the :class:`~convnn._lowering.ConvConfig`.
      plugin: one of :data:`APPLE_BACKENDS`.
      version: the plugin's version, or ``None`` (unknown: every rule applies).

    Returns:
      ``"xla"``, ``"decomposed"``, or their float32 forms ``"xla-float32"`` /
      ``"decomposed-float32"``.

    Example:
      >>> from convnn._lowering import ConvConfig, ConvSpec
      >>> spec = ConvSpec((2, 2), ((1, 1), (1, 1)), (1, 1), (1, 1), 4, False)
      >>> cfg = ConvConfig((1, 8, 8, 8), (8, 3, 3, 2), jnp.float32, spec)
      >>> route(cfg, "jax-mps", "0.10.11"), route(cfg, "jax-mps", "0.11.1")
      ('decomposed', 'xla')
    """
    name = "xla"
    for rule in RULES:
        if rule.plugin == plugin and rule.applies(version) and rule.catches(cfg):
            name = rule.strategy
            break
    for rule in FLOAT32_RULES:
        if rule.plugin == plugin and rule.applies(version) and rule.catches(cfg):
            return f"{name}-float32"
    return name


def _caught(cfg: ConvConfig, plugin: str, version: str | None) -> list[Rule]:
    """The rules that decide ``cfg``: the first routing rule that catches it, and the float32
    rule if one does."""
    first = [next((r for r in RULES if r.plugin == plugin and r.applies(version)
                   and r.catches(cfg)), None)]
    f32 = [next((r for r in FLOAT32_RULES if r.plugin == plugin and r.applies(version)
                 and r.catches(cfg)), None)]
    return [r for r in first + f32 if r is not None]


#: The form of each routed strategy that runs on an Apple plugin: the decomposed form with no
#: reduction over more than 4 axes (jax-metal aborts on rank-5 and rank-6 reductions).
ON_APPLE = {"decomposed": "decomposed-rank4", "decomposed-float32": "decomposed-rank4-float32"}


def on_apple(cfg: ConvConfig, target: Target) -> tuple[str, str]:
    """A forced ``"decomposed"`` on an Apple plugin: its rank-4 form."""
    return ON_APPLE["decomposed"], f"{target.backend}: reductions over at most 4 axes"


def policy(plugin: str) -> Callable[[ConvConfig, Target], Decision]:
    """The ``"auto"`` policy of one plugin: :func:`route` at the target's version (a routed
    ``"decomposed"`` runs as its rank-4 form, :data:`ON_APPLE`)."""

    def decide(cfg: ConvConfig, target: Target) -> Decision:
        version = target.version
        rules = _caught(cfg, plugin, version)
        why = "; ".join(f"{r.what}: {r.why}" for r in rules) or "no routing rule catches it"
        name = route(cfg, plugin, version)
        return Decision((ON_APPLE.get(name, name),),
                        f"{plugin} {version or '(version unknown)'}: {why}")

    decide.__name__ = f"policy_{plugin.replace('-', '_')}"
    decide.__doc__ = f"{plugin}: the routing table in convnn/_lowering/_apple.py."
    return decide
