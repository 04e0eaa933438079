"""`revelio registry export MODEL_URI DIR --format …` and `revelio registry import DIR --format …`."""
from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", default=None, help="export: the new directory to write")
    p.add_argument("--format", dest="format", default=None,
                   help="export: saelens|sparsify|revelio; import: saelens|sparsify|unbox|saeuron")
    p.add_argument("--hook-point", default=None, help="import: the hook point the SAE reads (else from its files)")
    p.add_argument("--timestep", type=int, default=None, help="import: the timestep the SAE was trained at")
    p.add_argument("--backbone-id", default=None, help="import: the backbone the SAE was trained on")
    p.add_argument("--no-register", action="store_true",
                   help="import: only convert into --dest, do not register a revelio-sae version")


def _usage(msg: str) -> int:
    print(f"revelio registry: {msg}", file=sys.stderr)
    return 2


def run_transfer(args: argparse.Namespace) -> int:
    from ..registry.transfer import export_sae, import_sae
    from ..sae.formats import EXPORT_FORMATS, IMPORT_FORMATS

    if args.action == "export":
        if not args.uri or not args.path:
            return _usage("export takes MODEL_URI DIR, e.g. revelio registry export revelio-sae@champion out "
                          "--format saelens")
        if args.format not in EXPORT_FORMATS:
            return _usage(f"export needs --format {'|'.join(EXPORT_FORMATS)} (got {args.format!r})")
        res = export_sae(args.uri, args.path, args.format)
        print(f"exported {args.uri} as {args.format} into {res.path} (weights in {res.weights_dir}, model card "
              f"{res.path / 'README.md'})")
        return 0
    if not args.uri:
        return _usage("import takes DIR, e.g. revelio registry import ./my_sae --format saelens")
    if args.format not in IMPORT_FORMATS:
        return _usage(f"import needs --format {'|'.join(IMPORT_FORMATS)} (got {args.format!r})")
    if args.path:
        return _usage(f"import takes one folder; write the converted SAE elsewhere with --dest (got {args.path!r})")
    res = import_sae(args.uri, args.format, dest=args.dest, register=not args.no_register,
                     hook_point=args.hook_point, timestep=args.timestep, backbone=args.backbone_id)
    if res.registration is None:
        print(f"converted {args.uri} ({args.format}) into {res.sae_dir}")
    else:
        r = res.registration
        print(f"imported {args.uri} ({args.format}) as {r.name} version {r.version} (origin={args.format}); "
              f"use it with --set probe.sae={r.name}/{r.version}")
    return 0
