"""Probes that validate features and SAE latents: linear probe, Diff-C, few-shot protocol, controls, sweep.

A saved probe is a directory with `probe.json` (format, kind, classes, concept, input, hook point,
timestep, C, SAE reference) and safetensors weights; nothing is ever pickled.
"""
from __future__ import annotations

from pathlib import Path

from .diffc import DiffCProbe
from .linear import LinearProbe, ProbeFormatError, fit_linear_probe, read_meta


def read_probe(directory: str | Path, device: str = "cpu"):
    """A saved LinearProbe or DiffCProbe, by the kind recorded in its JSON."""
    meta = read_meta(Path(directory))
    if meta["kind"] == "linear":
        return LinearProbe.load(directory)
    if meta["kind"] == "diffc":
        return DiffCProbe.load(directory, device=device)
    raise ProbeFormatError(f"{directory}: unknown probe kind {meta['kind']!r}")


__all__ = ["LinearProbe", "ProbeFormatError", "fit_linear_probe", "read_probe"]
