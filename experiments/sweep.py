r"""Run an ablation sweep a config file defines (`get_sweep()`, experiments/sweeps/grid.py).

    python -m experiments.sweep --config experiments/configs/clip/tiny.py \
        --workdir workdirs/sweep_clip_tiny --workers 2          # train every point here
    python -m experiments.sweep ... --dry-run                   # list points and workdirs
    python -m experiments.sweep ... --collect                   # results.csv / .md / .png
    python -m experiments.sweep ... --launcher print            # one train command per point
    python -m experiments.sweep ... --launcher slurm|skypilot --storage mysql://...

The engine is Optuna: one study per sweep root (a journal file there, or `--storage URL`);
a grid is a GridSampler study, a search a TPE study (optionally pruned by the periodic
evaluations). Each point trains in `<root>/<point name>` through `experiments.train`, so
re-running the sweep skips finished points and resumes interrupted ones from their
checkpoints; a failing point is recorded as failed with its log and the others go on.
`optuna-dashboard <root>/optuna_journal.log` browses the study.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys

from etils import epath

from experiments.sweeps import plan as sweep_plan
from experiments.sweeps import results as sweep_results
from experiments.sweeps import study as sweep_study
from experiments.sweeps import worker as sweep_worker

LAUNCHERS = ("local", "print", "slurm", "skypilot")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.sweep", description=__doc__.split("\n\n")[0].strip()
    )
    p.add_argument("--config", required=True, help="config file defining get_sweep() [:args]")
    p.add_argument("--workdir", required=True, help="the sweep root (one workdir per point)")
    p.add_argument("--workers", type=int, default=1, help="local: worker processes")
    p.add_argument("--dry-run", action="store_true", help="list the points and their workdirs")
    p.add_argument("--launcher", choices=LAUNCHERS, default="local")
    p.add_argument("--collect", action="store_true", help="only write the results files")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: journal file)")
    p.add_argument("--metric", default=None, help="sort/plot by this '<eval>/<metric>'")
    p.add_argument("--plot-x", default=None, help="the swept field on the plot's x axis")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--max-points", type=int, default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        if args.workers < 1:
            raise sweep_plan.SweepError(f"--workers must be >= 1, got {args.workers}")
        plan = sweep_plan.load_plan(args.config)
        sweep_plan.check_fields(plan, [args.plot_x] if args.plot_x else [])
        if args.metric is not None and "/" not in args.metric:
            raise sweep_plan.SweepError(f"--metric must be '<eval>/<metric>', got {args.metric!r}")
        root = str(epath.Path(args.workdir).expanduser())
        if args.dry_run:
            print(dry_run(plan, root))
            return 0
        if args.worker:
            sweep_worker.run_worker(root, plan, args.storage, args.max_points)
            return 0
        epath.Path(root).mkdir(parents=True, exist_ok=True)
        study = sweep_study.open_study(root, plan, args.storage)
        if args.collect:
            return _collect(study, plan, root, args)
        if args.launcher == "print":
            print(print_commands(plan, root))
            return 0
        interrupted = sweep_study.mark_interrupted(study)
        queued = sweep_study.requeue_unfinished(study, plan)
        if interrupted or queued:
            logging.info("sweep: interrupted trials %s; retrying %s", interrupted, queued)
        if args.launcher == "local":
            run_local(plan, root, args)
            return _collect(study, plan, root, args)
        return launch_cluster(args.launcher, plan, root, args)
    except sweep_plan.SweepError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 2


def _collect(study, plan, root, args) -> int:
    summary = sweep_results.write(study, plan, root, metric=args.metric, plot_x=args.plot_x)
    print(summary["markdown"])
    print(f"wrote {root}/results.csv, results.md" + (", results.png" if summary["plot"] else ""))
    failed = [r["point"] for r in summary["rows"] if r["status"] == "failed"]
    if failed:
        print(f"failed points (see their train.log): {failed}", file=sys.stderr)
    return 1 if failed else 0


def dry_run(plan: sweep_plan.Plan, root: str) -> str:
    lines = [plan.describe()]
    if plan.sweep.search is not None:
        for field, d in plan.sweep.search.space.items():
            lines.append(f"  {field}: {d}")
        lines.append(f"  workdirs: {root}/trial_NNNN")
        return "\n".join(lines)
    for p in plan.points:
        lines.append(f"  [{p.index}] {os.path.join(root, p.name)}  {p.overrides}")
    return "\n".join(lines)


def worker_command(args, root: str) -> list[str]:
    cmd = [sys.executable, "-m", "experiments.sweep", "--worker"]
    cmd += [f"--config={args.config}", f"--workdir={root}"]
    return cmd + ([f"--storage={args.storage}"] if args.storage else [])


def run_local(plan: sweep_plan.Plan, root: str, args) -> None:
    """N worker processes on this machine; they die with the sweep process."""
    procs = [
        subprocess.Popen(
            worker_command(args, root),
            env=sweep_worker.child_env(),
            preexec_fn=sweep_worker.die_with_parent,
        )
        for _ in range(args.workers)
    ]

    def stop(signum, frame):
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for p in procs:
        p.wait()


def print_commands(plan: sweep_plan.Plan, root: str) -> str:
    """One training command per point, for any scheduler (collect with --collect)."""
    if plan.sweep.search is not None:
        raise sweep_plan.SweepError(
            "--launcher print lists grid points; a search's points come from Optuna as it runs: "
            "start workers (`--launcher local`, slurm or skypilot) instead"
        )
    return "\n".join(shlex.join(p.train_command(os.path.join(root, p.name))) for p in plan.points)


def launch_cluster(launcher: str, plan: sweep_plan.Plan, root: str, args) -> int:
    """One worker job per point (grid) or per `--workers` (search), sharing the storage."""
    if not args.storage and not root.startswith(("gs://", "s3://")):
        logging.warning(
            "sweep: the study is the journal file in %s: cluster workers must all see that "
            "directory (a shared filesystem), or pass --storage <database URL>",
            root,
        )
    jobs = len(plan.points) if plan.sweep.search is None else args.workers
    worker = shlex.join([*worker_command(args, root), "--max-points=1"][1:])
    if launcher == "slurm":
        script = epath.Path(root) / "sweep_workers.sbatch"
        script.write_text(
            "#!/bin/bash\n#SBATCH --job-name=vlax-sweep\n#SBATCH --ntasks=1\n"
            f"#SBATCH --array=1-{jobs}\n#SBATCH --output={root}/slurm-%A_%a.out\n"
            f"set -euo pipefail\ncd {shlex.quote(sweep_worker.REPO_ROOT)}\n"
            f'"${{PYTHON:-.venv/bin/python}}" {worker}\n'
        )
        command = ["sbatch", str(script)]
    else:
        task = epath.Path(root) / "sweep_worker.yaml"
        task.write_text(
            "name: vlax-sweep-worker\nresources:\n  accelerators: H100:1\nworkdir: .\n"
            "setup: |\n  python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt"
            ' "jax[cuda12]==0.10.2"\n'
            f"run: |\n  .venv/bin/python {worker}\n"
        )
        command = ["sky", "jobs", "launch", "-y", str(task)]
    if shutil.which(command[0]) is None:
        raise sweep_plan.SweepError(
            f"{command[0]!r} is not installed here; the job file is {command[-1]}: submit it "
            f"{jobs} time(s) from a machine that has {command[0]} ({shlex.join(command)})"
        )
    for _ in range(1 if launcher == "slurm" else jobs):
        subprocess.run(command, check=True)
    print(f"submitted {jobs} worker job(s); collect with --collect")
    return 0


if __name__ == "__main__":
    sys.exit(main())
