"""How a label array's values read as classes: the `cellmap.annotation` attributes of the
challenge's ground truth (semantic codes, instance ids, the unknown code)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelEncoding:
    """How a label array's values read as classes: the `cellmap.annotation.annotation_type`
    attributes (cellmap-schemas), `encoding` mapping absent / present / unknown to the values
    that stand for them (the challenge's data: absent 0, present 1, unknown 255).

    Semantic arrays: the absent value reads 0, the present value 1, unknown NaN; other values
    as stored. Instance arrays hold object ids, the values the encoding does not name: every id
    reads 1, absent 0, and unknown NaN where the encoding names one. That makes an id equal to
    the unknown code unknown: cellmap-schemas reserves the codes the encoding names (an
    object's id is a value it does not name), and masking such an object out of the loss
    costs some signal where reading unknown voxels as foreground would teach a wrong label.
    Arrays without the attributes read as stored (0 absent, above 0 present).
    """

    unknown: float | None = None
    instance: bool = False
    absent: float = 0.0
    present: float | None = None

    @classmethod
    def from_attrs(cls, *attr_sets: dict) -> "LabelEncoding":
        for attrs in attr_sets:
            annotation = (attrs.get("cellmap") or {}).get("annotation")
            if not isinstance(annotation, dict):
                continue
            kind = annotation.get("annotation_type") or {}
            codes = kind.get("encoding") or {}
            absent, present, unknown = (codes.get(name) for name in ("absent", "present", "unknown"))
            return cls(None if unknown is None else float(unknown), kind.get("type") == "instance_segmentation",
                       0.0 if absent is None else float(absent), None if present is None else float(present))
        return cls()

    def decode(self, values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """float32 labels: 0 / 1 (or the stored value) / NaN for unknown; written into `out` when
        given (a slot of the caller's array)."""
        if out is None:
            out = values.astype(np.float32)
        else:
            np.copyto(out, values, casting="unsafe")
        if self.instance:
            np.copyto(out, np.where(np.isnan(out), np.nan, (out != self.absent).astype(np.float32)))
        else:
            if self.absent != 0:
                out[values == self.absent] = 0
            if self.present is not None and self.present != 1:
                out[values == self.present] = 1
        if self.unknown is not None:
            out[values == self.unknown] = np.nan
        return out
