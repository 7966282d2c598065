"""The scheme registry: one name -> one exact scheme.  It drives the audit, the conformance tests and
(later) the fast engine, which must provide a kernel under the same name for every lossless scheme."""

from __future__ import annotations

from .schemes.adaptive import ADAPTIVE_SCHEMES
from .schemes.block import Block
from .schemes.greedy import Greedy
from .schemes.hierarchy import hierarchy, hierarchy_resample_middle
from .schemes.hsd_capped import HSDCapped
from .schemes.hsd_naive import HSDNaive
from .schemes.hsd_released import HSDReleased
from .schemes.lenience import Lenience
from .schemes.resample_from_target import ResampleFromTarget
from .schemes.rrs import RRS
from .schemes.rrs_without_replacement import RRSWithoutReplacement
from .schemes.spectr_kseq import SpecTrKSeq
from .schemes.tokenwise import Tokenwise

__all__ = ["SCHEMES", "get_scheme", "lossless_schemes", "lossy_schemes"]

SCHEMES = {
    s.name: s
    for s in (
        Tokenwise(),
        Greedy(),
        Block(),
        HSDCapped(),
        HSDNaive(),
        RRS(n_drafts=2),
        RRSWithoutReplacement(n_drafts=2),
        SpecTrKSeq(n_drafts=2),
        hierarchy(),
        HSDReleased(),
        Lenience(),
        ResampleFromTarget(),
        hierarchy_resample_middle(),
        *ADAPTIVE_SCHEMES,
    )
}


def get_scheme(name: str):
    """The registered scheme called ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return SCHEMES[name]
    except (KeyError, TypeError):
        raise ValueError(f"scheme: unknown scheme {name!r}; known: {', '.join(SCHEMES)}") from None


def lossless_schemes():
    return [s for s in SCHEMES.values() if s.lossless]


def lossy_schemes():
    return [s for s in SCHEMES.values() if not s.lossless]
