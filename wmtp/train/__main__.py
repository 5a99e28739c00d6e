"""`python -m wmtp.train SPEC [--set k=v]… [--preset P]… [--run-dir DIR] [--stage NAME]… [--dry-run]`.

What torchrun runs (`wmtp train` passes its arguments on when it launches torchrun)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from wmtp.errors import WmtpError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wmtp.train", description=__doc__)
    parser.add_argument("spec", help="jobs/<experiment>.yaml or an experiment name")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--preset",
        dest="presets",
        action="append",
        default=[],
        metavar="NAME",
        help="a jobs/presets/ layer (repeatable: applied in order)",
    )
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument(
        "--stage",
        dest="stages",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this stage of the experiment (repeatable); default: every stage",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the resolved spec of every stage and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from wmtp.train.config import dump_spec, load_experiment, select_stages

    try:
        experiment = select_stages(load_experiment(args.spec, args.overrides, args.presets), args.stages)
        if args.dry_run:
            for spec in experiment.stages:
                print(f"# stage: {spec.stage}\n{dump_spec(spec)}---")
            return 0
        from wmtp.train.runner import main_process

        return main_process(experiment, args.run_dir)
    except WmtpError as exc:
        # Under torchrun, name the rank: an error may be one rank's own (`wmtp train` checks the input
        # paths before launching, so the common all-ranks-alike errors do not reach here).
        rank = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"{rank}error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
