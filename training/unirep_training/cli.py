"""Command line: ``unirep-train --config configs/mini.yaml`` (also ``python -m unirep_training``
and ``unirep train`` through the ``unirep.commands`` entry-point group)."""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from typing import Sequence

__all__ = ["main", "register", "add_arguments", "run"]

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="training config (YAML or JSON)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set run.steps=100 (repeatable)")
    p.add_argument("--resume", default="auto",
                   help="'auto' (latest checkpoint in run.output_dir, if any), 'none', or a checkpoint directory")
    p.add_argument("--stop-at", type=int, default=None, help="stop (with a checkpoint) after this many steps")
    p.add_argument("--prepare-only", action="store_true", help="build the feature caches and exit")
    p.add_argument("--export-only", action="store_true", help="export from the latest checkpoint without training")
    p.add_argument("--export-dir", default=None, help="export here instead of export.dir")
    p.add_argument("--no-export", action="store_true", help="do not export after training")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace, command: str | None = None) -> int:
    from .config import load_config
    from .trainer import Trainer

    config = load_config(args.config, args.overrides)
    trainer = Trainer(config, command=command, resume=args.resume, show_progress=False if args.no_progress else None)
    if args.prepare_only:
        logger.info("caches ready in %s", config.cache_dir)
        return 0
    if not args.export_only:
        metrics = trainer.train(stop_at=args.stop_at)
        if metrics:
            logger.info("final dev metrics: %s", json.dumps(metrics))
        if args.stop_at is not None and trainer.step < config.run.steps:
            return 0
    if args.export_only or (config.export.after_train and not args.no_export):
        out = trainer.export(args.export_dir)
        print(f"exported {out}")
    return 0


def _from_unirep(args: argparse.Namespace) -> int:
    return run(args, command="unirep " + " ".join(shlex.quote(a) for a in sys.argv[1:]))


def register(subparsers) -> None:
    """Entry point of the ``unirep.commands`` group: adds ``unirep train``."""
    p = subparsers.add_parser("train", help="train or fine-tune a UniRep model from a config")
    add_arguments(p)
    p.set_defaults(func=_from_unirep)


def main(argv: Sequence[str] | None = None, prog: str = "unirep-train") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=prog, description="Train a UniRep model")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        return run(args, command=f"{prog} " + " ".join(shlex.quote(a) for a in argv))
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
