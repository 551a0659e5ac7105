"""Attention tokens whose output fp32 rounding decides, and the reference's other legitimate outputs.

LiteMLA divides ``ReLU(q) . (sum_n ReLU(k_n) v_n)`` by ``ReLU(q) . sum_n ReLU(k_n) + eps``. Where
every positive component of a token's query meets a key dimension that no token uses
(``sum_n ReLU(k_n)[d] == 0``), both sums are 0 and the output is ``0 / eps = 0``. If another
query component sits within rounding of 0 (``|q_d| <~ 1e-6`` before the ReLU) and its key
dimension does carry mass, fp32 rounding decides its sign: on one side the output stays 0, on
the other it jumps to that dimension's value average, O(1) away. The function itself is
discontinuous there, so no fp32 engine (PyTorch included) can promise either side; which side a
runtime lands on depends only on its summation order (measured on cls-B1 at 512x512, seeded
weights seed 71, random sample 2: the pre-activation is -4.2e-7 in float64, -5.6e-7 in PyTorch
fp32, +1.8e-7 in ONNX Runtime's NCHWc path, whose errors elsewhere match PyTorch's: rms 5.5e-7
both; the logits then differ by 8.5e-4 relative).

``TieWatch`` finds candidate tokens while the fp32 reference runs; ``ill_conditioned`` keeps only
those a float64 run of the same model shows to be ill-conditioned (the denominator no larger than
what rounding the near-zero components could add to it), and none when there are more than
``MAX_TIES``; ``flipped_outputs`` reruns the model with each kept tie broken the other way. So
``verify`` can compare an artifact with the outcome its own rounding chose
(``contracts.AmbiguousOutputs``) instead of failing a correct export, while an artifact wrong
anywhere else still fails: the alternatives differ from the reference at those tokens only.
Only the linear path (tokens > dim) is watched: the quadratic path runs on maps of at most
``dim`` tokens.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from .attention import LiteMLA

__all__ = ["MAX_TIES", "Tie", "TieWatch", "flipped_outputs", "ill_conditioned"]

# A query component within this fraction of its head's largest |q| is "within rounding of 0":
# ~10x the worst fp32 error measured on the case above (3e-6 on |q| <= 3.5).
TIE_TOLERANCE = 1e-5
# At most this many tokens of one sample are excused: one rounding accident is plausible, many are a
# model or artifact problem, judged strictly (the real case above has one).
MAX_TIES = 2


@dataclass(frozen=True)
class Tie:
    """One token of one LiteMLA head whose output depends on the sign of near-zero query components."""

    module: str  # qualified name of the LiteMLA
    batch: int
    head: int  # group index of ``LiteMLA._split`` (base heads first, then the multi-scale ones)
    row: int
    col: int
    dims: tuple[int, ...]  # the near-zero query components whose key dimensions carry mass
    positive: bool  # the watched run took them as positive (the output is their value average)
    denominator: float  # sum_d ReLU(q_d) * key mass_d over the firm components (the run's precision)
    rounding: float  # the most rounding of the near-zero components could add to it

    @property
    def token(self) -> tuple[str, int, int, int, int]:
        return self.module, self.batch, self.head, self.row, self.col

    def describe(self) -> str:
        side = "its value average" if self.positive else "0"
        return (f"{self.module} head {self.head} token ({self.row}, {self.col}) of image {self.batch}: "
                f"query components {list(self.dims)} are within rounding of 0 and decide its output "
                f"(here {side}; float64 denominator {self.denominator:.2g} against {self.rounding:.2g} "
                "from rounding)")


class TieWatch:
    """Records the ties of every LiteMLA of ``model`` during the forward passes run inside ``watching``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.ties: list[Tie] = []

    @contextmanager
    def watching(self) -> Iterator[TieWatch]:
        self.ties = []

        def observe(name: str, module: LiteMLA, qkv: torch.Tensor) -> torch.Tensor:
            self.ties += _ties(name, module, qkv)
            return qkv

        with _intercepting(self.model, observe):
            yield self


def ill_conditioned(model: torch.nn.Module, run: Callable[[torch.nn.Module], object],
                    candidates: list[Tie]) -> list[Tie]:
    """The ``candidates`` (found in fp32) that ``run(model in float64)`` shows to be ill-conditioned, with
    the float64 figures; none when more than ``MAX_TIES`` are.

    ``run`` calls the model it is given on the sample's inputs cast to float64."""
    if not candidates:
        return []
    exact = copy.deepcopy(model).double()
    watch = TieWatch(exact)
    with watch.watching(), torch.inference_mode():
        run(exact)
    confirmed = {tie.token: tie for tie in watch.ties}
    kept = [replace(tie, denominator=confirmed[tie.token].denominator, rounding=confirmed[tie.token].rounding)
            for tie in candidates if tie.token in confirmed]
    return kept if len(kept) <= MAX_TIES else []


def flipped_outputs(model: torch.nn.Module, run: Callable[[], object], ties: list[Tie]) -> list[object]:
    """``run()``'s results with the ties broken the other way: all at once, then each alone.

    Near-zero components the watched run took as negative become slightly positive (the token's
    output becomes their value average); ones it took as positive become 0 (the output becomes 0).
    """
    if not ties:
        return []
    subsets = [ties] + ([[tie] for tie in ties] if len(ties) > 1 else [])
    results = []
    for subset in subsets:
        def flip(name: str, module: LiteMLA, qkv: torch.Tensor, chosen: list[Tie] = subset) -> torch.Tensor:
            return _flip(name, module, qkv, chosen)

        with _intercepting(model, flip):
            results.append(run())
    return results


@contextmanager
def _intercepting(model: torch.nn.Module,
                  hook: Callable[[str, LiteMLA, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Route the concatenated qkv of every LiteMLA's linear path through ``hook`` (returns the qkv to use)."""
    patched: list[tuple[LiteMLA, object]] = []  # (module, its instance attribute before, if any)
    try:
        for name, module in model.named_modules():
            if isinstance(module, LiteMLA):
                original = module.relu_linear_att

                def routed(qkv: torch.Tensor, _name: str = name, _module: LiteMLA = module,
                           _original: Callable[[torch.Tensor], torch.Tensor] = original) -> torch.Tensor:
                    return _original(hook(_name, _module, qkv))

                patched.append((module, vars(module).get("relu_linear_att")))
                module.relu_linear_att = routed  # type: ignore[method-assign]
        yield
    finally:
        for module, before in reversed(patched):
            if before is None:
                del module.relu_linear_att  # the class method shows through again
            else:  # an enclosing interception's
                module.relu_linear_att = before  # type: ignore[method-assign]


def _ties(name: str, module: LiteMLA, qkv: torch.Tensor) -> list[Tie]:
    q, k, _ = module._split(qkv if qkv.dtype == torch.float64 else qkv.float())  # (B, G, dim, N)
    key_mass = torch.relu(k).sum(dim=-1, keepdim=True)  # (B, G, dim, 1)
    scale = q.abs().amax(dim=(2, 3), keepdim=True)  # (B, G, 1, 1)
    near = (q.abs() <= TIE_TOLERANCE * scale) & (key_mass > 0)
    if not bool(near.any()):
        return []
    firm = torch.relu(q) * ~near  # components whose sign no rounding changes
    den_firm = (firm * key_mass).sum(dim=2)  # (B, G, N)
    den_noise = (near * key_mass).sum(dim=2) * TIE_TOLERANCE * scale[:, :, 0]
    tied = near.any(dim=2) & (den_firm <= den_noise)
    width = qkv.shape[-1]
    found = []
    for b, g, n in tied.nonzero().tolist():
        dims = tuple(near[b, g, :, n].nonzero().flatten().tolist())
        positive = bool((q[b, g, list(dims), n] > 0).any())
        found.append(Tie(name, b, g, n // width, n % width, dims, positive,
                         float(den_firm[b, g, n]), float(den_noise[b, g, n])))
    return found


def _flip(name: str, module: LiteMLA, qkv: torch.Tensor, ties: list[Tie]) -> torch.Tensor:
    mine = [t for t in ties if t.module == name]
    if not mine:
        return qkv
    qkv = qkv.clone()
    q, _, _ = module._split(qkv)
    scale = q.abs().amax(dim=(2, 3))
    for tie in mine:
        channels = [tie.head * 3 * module.dim + d for d in tie.dims]
        value = 0.0 if tie.positive else float(TIE_TOLERANCE * scale[tie.batch, tie.head])
        qkv[tie.batch, channels, tie.row, tie.col] = value
    return qkv
