"""The parametrization: device x flavor x variant (policy x attention), with reversible ids.

``Case("cpu", small, "full-sdpa")`` has the id ``cpu-small-full-sdpa``: ``pytest -k full-sdpa``
selects it, ``parse_case_id`` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass

from ac_bench.models import (
    FLAVORS,
    Flavor,
    build_model,
    family_of,
    get_flavor,
    get_policy,
    parse_variant,
    resolve_dtype,
)

DEVICES: tuple[str, ...] = ("cpu", "cuda")

#: Flavors run when ``--flavor`` is not given. On the CPU: ``small`` measured for real, ``seed``
#: and the Llama-3-8B-shaped ``llama3-8b-4l`` estimated on fake tensors; on CUDA: ``seed``
#: measured for real.
DEFAULT_FLAVORS: dict[str, tuple[str, ...]] = {"cpu": ("small", "seed", "llama3-8b-4l"), "cuda": ("seed",)}

#: torch.compile's activation memory budget (``budget_B``): compiled at ``COMPILE_FLAVOR`` in
#: the default run whatever ``--flavor`` selects (a compile takes seconds at ``tiny``, about a
#: minute at ``small`` on the CPU), over ``COMPILE_BUDGETS``; these records are gated too.
COMPILE_FLAVOR = "tiny"
COMPILE_BUDGETS: tuple[float, ...] = (1.0, 0.5, 0.3, 0.1, 0.0)


@dataclass(frozen=True)
class Case:
    """One variant of one flavor on one device."""

    device: str
    flavor: Flavor
    variant: str

    @property
    def policy(self) -> str:
        return parse_variant(self.variant)[0]

    @property
    def attention(self) -> str:
        return parse_variant(self.variant)[1]

    @property
    def id(self) -> str:
        return f"{self.device}-{self.flavor.name}-{self.variant}"

    def __str__(self) -> str:
        return self.id


def parse_case_id(case_id: str) -> Case:
    """``cpu-small-full-sdpa`` -> Case; the inverse of ``Case.id``. Flavor names may contain
    hyphens (``llama-small``); policy names never do, so the variant is the last two parts."""
    device, _, rest = case_id.partition("-")
    flavor, policy, attention = (rest.rsplit("-", 2) + ["", ""])[:3]
    if device not in DEVICES:
        raise ValueError(f"case id {case_id!r}: unknown device {device!r}; valid: {', '.join(DEVICES)}")
    variant = f"{policy}-{attention}"
    parse_variant(variant)
    return Case(device, get_flavor(flavor), variant)


def parse_flavor_list(text: str) -> tuple[Flavor, ...]:
    """``"small,seed"`` -> flavors; an unknown name raises with the valid names."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--flavor got no flavor names; valid names: {', '.join(FLAVORS)}")
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise ValueError(f"--flavor names {doubled[0]!r} twice; give each flavor once (valid names: {', '.join(FLAVORS)})")
    return tuple(get_flavor(n) for n in names)


def cases(device: str, flavors: tuple[Flavor, ...], variants: tuple[str, ...] | None = None) -> list[Case]:
    """Every variant of every flavor on ``device`` that its family runs (``Family.variants``:
    ``POLICIES`` and the family's ``extra_policies``, where it declares the attention, the
    sublayers and the policy's kind), or of ``variants`` where given, flavors outer."""
    return [Case(device, f, v) for f in flavors
            for v in (family_of(f).variants() if variants is None else variants) if _applies(f, v)]


def _applies(flavor: Flavor, variant: str) -> bool:
    family = family_of(flavor)
    policy, attention = parse_variant(variant)
    return attention in family.attentions and family.applies(get_policy(policy))


def variant_problem(flavor: Flavor, variant: str) -> str | None:
    """Why ``variant`` cannot run on ``flavor`` (None if it can), in one line: its family lacks
    the attention implementation or the sublayers the policy wraps, or cannot run its kind
    (``Family.unsupported_kinds``), or the policy refuses the
    model (``sequential_5`` on a model of 3 blocks, ``plan_a9_m0`` on one of 4). Found by
    applying the policy to the model built on the meta device: no memory, no compute, and the
    policy's own check, so a new kind's limits need no rule here. Raises ValueError for a
    variant name that does not parse."""
    policy_name, attention = parse_variant(variant)
    family, policy = family_of(flavor), get_policy(policy_name)
    if attention not in family.attentions:
        return (f"{variant}: family {family.name!r} of flavor {flavor.name!r} has no {attention} attention "
                f"(it declares {', '.join(family.attentions)})")
    reason = family.exclusion(policy)  # a sublayer it lacks, or a kind it cannot run
    if reason:
        return f"{variant}: {reason}"
    problem = build_problem(flavor, attention, "cpu")
    if problem:
        return f"{variant}: {problem}"
    try:
        policy.apply(build_model(flavor, attention, "meta", resolve_dtype(flavor, "cpu")))
    except ValueError as exc:
        return f"{variant} on flavor {flavor.name!r} (depth {flavor.depth}): {_one_line(exc)}"
    return None


def build_problem(flavor: Flavor, attention: str, device: str, dropout: float = 0.0) -> str | None:
    """Why the flavor's family cannot build its model (None if it can), in one line naming the
    flavor, the attention and the exception the family's builder raised. Tried on the meta
    device (no memory); a builder that fails there only (one that reads a tensor's values while
    building) is tried again on ``device`` before its failure counts. A model without the
    contract's ``blocks`` (``ac_bench.models.families``), which every policy reads, is a problem too."""
    model = None
    try:
        model = build_model(flavor, attention, "meta", resolve_dtype(flavor, device), dropout)
    except Exception:  # the family's own code: anything it raises
        pass
    if model is None:
        try:
            model = build_model(flavor, attention, device, resolve_dtype(flavor, device), dropout)
        except Exception as exc:
            return (f"building flavor {flavor.name!r} with {attention} attention"
                    f"{f' and dropout {dropout}' if dropout else ''} raised {type(exc).__name__}: {_one_line(exc)}")
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(blocks, "__len__") or len(blocks) == 0:
        return (f"the model of flavor {flavor.name!r} ({type(model).__name__}) has no `blocks`, the sequence of "
                f"layers its forward runs that every policy wraps (docs/extending.md, \"A model family\")")
    return None


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def xdist_scope(nodeid: str, shared_modules: tuple[str, ...] = ()) -> str | None:
    """The pytest-xdist work unit of a test: the module, for a module in ``shared_modules``
    (whose tests share one expensive launch), or the function, for ``path::function`` there (its
    parameters share one, a launch of several ranks); the case id
    (``cpu-small-full-sdpa``) for a test parametrized by a case, so that every module's tests of
    one variant run on one worker, which measures it once; None otherwise (the scheduler's default)."""
    path, _, rest = nodeid.partition("::")
    if path in shared_modules:
        return path
    function = f"{path}::{rest.split('[')[0]}"
    if function in shared_modules:
        return function
    if rest.endswith("]") and "[" in rest:
        param = rest[rest.index("[") + 1:-1]
        try:
            return parse_case_id(param).id
        except ValueError:
            return None
    return None


def step_size(flavor: Flavor) -> int:
    """Elements of activations one step makes, roughly (depth x batch x seq x (width + heads x
    seq)): the order of the flavors' step costs, used to pick the cheapest."""
    return flavor.depth * flavor.batch * flavor.seq_len * (flavor.d_model + flavor.n_heads * flavor.seq_len)


def growth_flavors(flavors: tuple[Flavor, ...]) -> tuple[Flavor, ...]:
    """The flavors the default run checks for memory growth (the ``growth_case`` parameters):
    for each family of ``flavors``, its cheapest flavor (``step_size``) among those it declares
    and those selected (``tiny`` for the notebook's block, ``llama-small`` for ``llama``). A leak
    does not depend on the size; four steps of every variant at every selected flavor would add
    minutes, so the others run with ``--slow``."""
    by_family: dict[str, list[Flavor]] = {}
    for flavor in flavors:
        by_family.setdefault(flavor.family, [flavor, *family_of(flavor).flavors])
    return tuple(min(candidates, key=lambda f: (step_size(f), f.name)) for candidates in by_family.values())
