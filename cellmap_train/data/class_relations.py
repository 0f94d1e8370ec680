"""Which CellMap classes can share a voxel, for `data.mutual_exclusion`.

CellMap's label classes are built from atomic structures: `mito` is its membrane, lumen and
ribosomes, `nuc` its envelope, pores, chromatin, nucleoplasm and nucleolus, `cell` everything
but the extracellular space and a few structures outside cells. Two classes whose atoms do not
intersect never label the same voxel, so where one is present the other is absent: a crop that
annotates `mito` but not `nuc` still says that its mitochondria are not nucleus. The challenge's
`use_mutual_exclusion` infers these true negatives; this module holds the relation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

_MITO = ("mito_mem", "mito_lum", "mito_ribo")
_NE = ("ne_mem", "ne_lum", "np_out", "np_in")
_CHROM = ("hchrom", "nhchrom", "echrom", "nechrom")
_ERES = ("eres_mem", "eres_lum")
_CENT = ("cent", "cent_dapp", "cent_sdapp")
_ISG = ("isg_mem", "isg_lum", "isg_ins")
_PEROX = ("perox_mem", "perox_lum")
# plant structures: the challenge's table leaves them out of `cell`; counted in here, so that no
# negative is inferred between a cell and what lies in it
_PLANT = ("chloroplast_mem", "chloroplast_lum", "chloroplast_sg", "vacuole_mem", "vacuole_lum", "plasmodesmata")

# composite class -> the atomic classes it is the union of
PARTS: dict[str, frozenset[str]] = {name: frozenset(atoms) for name, atoms in {
    "mito": _MITO,
    "golgi": ("golgi_mem", "golgi_lum"),
    "ves": ("ves_mem", "ves_lum"),
    "endo": ("endo_mem", "endo_lum"),
    "lyso": ("lyso_mem", "lyso_lum"),
    "ld": ("ld_mem", "ld_lum"),
    "perox": _PEROX,
    "isg": _ISG,
    "eres": _ERES,
    "ne": _NE,
    "np": ("np_out", "np_in"),
    "chrom": _CHROM,
    "nuc": (*_NE, *_CHROM, "nucpl", "nucleo"),
    "er": ("er_mem", "er_lum", *_ERES, *_NE),
    "er_mem_all": ("er_mem", "eres_mem", "ne_mem"),
    "ne_mem_all": ("ne_mem", "np_out", "np_in"),
    "mt": ("mt_out", "mt_in"),
    "cent_all": _CENT,
    "chloroplast": ("chloroplast_mem", "chloroplast_lum", "chloroplast_sg"),
    "vacuole": ("vacuole_mem", "vacuole_lum"),
    "cell": ("pm", *_MITO, "golgi_mem", "golgi_lum", "ves_mem", "ves_lum", "endo_mem", "endo_lum", "lyso_mem",
             "lyso_lum", "ld_mem", "ld_lum", "er_mem", "er_lum", *_ERES, *_NE, *_CHROM, "nucpl", "nucleo", "mt_out",
             "mt_in", *_CENT, "ribo", "cyto", "vim", "glyco", *_PEROX, *_ISG, "actin", "tbar", *_PLANT),
}.items()}
ATOMS = frozenset({"ecs", "rbc", "bm", *(atom for atoms in PARTS.values() for atom in atoms)})


def atoms_of(name: str) -> frozenset[str] | None:
    """The atomic classes `name` covers; None for a name CellMap does not define."""
    if name in PARTS:
        return PARTS[name]
    return frozenset({name}) if name in ATOMS else None


def exclusive_partners(classes: Sequence[str]) -> tuple[list[tuple[int, ...]], list[str]]:
    """For each class, the indices of the other classes in `classes` that never share a voxel
    with it; and the names this table does not know (they take part in nothing)."""
    atoms = [atoms_of(name) for name in classes]
    partners = [tuple(j for j, theirs in enumerate(atoms) if mine is not None and theirs is not None and not mine & theirs)
                for mine in atoms]
    return partners, [name for name, mine in zip(classes, atoms) if mine is None]


def infer_negatives(labels: np.ndarray, exclusive: Sequence[tuple[int, ...]],
                    annotated: Sequence[bool] | None = None) -> np.ndarray:
    """`labels` [C, *S] (NaN = unknown), in place: an unknown voxel of a class becomes 0 where a
    class it never shares a voxel with is present. Inferred zeros are no evidence themselves, so
    the order does not matter. `annotated[c]` False says class c is unknown everywhere (not
    annotated in the crop): such classes are filled from one array per set of present partners
    (48 classes share a few such sets), a copy instead of a masked write each."""
    annotated = [True] * len(labels) if annotated is None else annotated
    candidates = sorted({o for others in exclusive for o in others if annotated[o]})
    present = {o: mask for o, mask in ((o, labels[o] > 0) for o in candidates) if mask.any()}
    evidence: dict[tuple[int, ...], np.ndarray] = {}
    filled: dict[tuple[int, ...], np.ndarray] = {}
    for c, others in enumerate(exclusive):
        key = tuple(o for o in others if o in present)
        if not key:
            continue
        if key not in evidence:
            evidence[key] = np.logical_or.reduce([present[o] for o in key])
        if annotated[c]:
            np.putmask(labels[c], evidence[key] & np.isnan(labels[c]), 0)
            continue
        if key not in filled:
            filled[key] = np.where(evidence[key], np.float32(0), np.float32(np.nan))
        labels[c] = filled[key]
    return labels
