"""Sweep definitions and their checks: errors name the point, before anything launches."""

import os
import subprocess
import sys
import textwrap

import pytest

from experiments import sweep
from experiments.sweeps import grid as sg
from experiments.sweeps import plan as sweep_plan
from experiments.sweeps import study as sweep_study
from experiments.sweeps import worker as sweep_worker

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
TINY = os.path.join(ROOT, "experiments", "configs", "clip", "tiny.py")


def _config_file(tmp_path, sweep_body: str, name="cfg.py") -> str:
    """A config file: the tiny CLIP config plus the given get_sweep body."""
    path = tmp_path / name
    path.write_text(
        textwrap.dedent(
            f"""
            import importlib.util
            from experiments.sweeps import grid as sg

            _spec = importlib.util.spec_from_file_location("_tiny", {TINY!r})
            _tiny = importlib.util.module_from_spec(_spec)
            _spec.loader.exec_module(_tiny)
            get_config = _tiny.get_config


            def get_sweep():
            """
        )
        + textwrap.indent(textwrap.dedent(sweep_body), "    ")
    )
    return str(path)


def test_product_zip_and_named_points():
    grid = sg.product(
        sg.values("a", [1, 2]), sg.zip_(sg.values("b", [3, 4]), sg.values("c", [5, 6]))
    )
    assert grid == [
        {"a": 1, "b": 3, "c": 5},
        {"a": 1, "b": 4, "c": 6},
        {"a": 2, "b": 3, "c": 5},
        {"a": 2, "b": 4, "c": 6},
    ]
    assert sg.point_name({"model.loss": "sigmoid", "optim.lr": 0.003}) == "loss=sigmoid,lr=0.003"
    assert sg.point_name(sg.named("base line", {"a": 1})) == "base_line"
    with pytest.raises(ValueError, match="one length"):
        sg.zip_(sg.values("a", [1, 2]), sg.values("b", [1]))
    with pytest.raises(ValueError, match="two axes set 'a'"):
        sg.product(sg.values("a", [1]), sg.values("a", [2]))


def test_the_demo_sweep_resolves_to_four_commands():
    plan = sweep_plan.load_plan("experiments/configs/clip/tiny.py")
    assert [p.name for p in plan.points] == [
        "loss=softmax,lr=0.001",
        "loss=softmax,lr=0.003",
        "loss=sigmoid,lr=0.001",
        "loss=sigmoid,lr=0.003",
    ]
    point = plan.points[3]
    assert point.config_arg == "experiments/configs/clip/tiny.py:steps=150,loss=sigmoid"
    assert point.flags == ("--config.optim.lr=0.003",)
    assert point.overrides == {":loss": "sigmoid", "optim.lr": 0.003}
    assert plan.sweep.swept_fields == [":loss", "optim.lr"]
    printed = sweep.print_commands(plan, "/r").splitlines()
    assert len(printed) == 4 and "--workdir=/r/loss=sigmoid,lr=0.003" in printed[3]


def test_unknown_field_names_the_point(tmp_path):
    path = _config_file(
        tmp_path, 'return sg.Sweep(grid=[{"optim.lr": 1e-3}, {"optim.lrr": 1e-3}], metric="z/t")'
    )
    with pytest.raises(sweep_plan.SweepError, match=r"sweep point 1 \{'optim.lrr': 0.001\}.*lrr"):
        sweep_plan.load_plan(path)


def test_wrong_type_names_the_point(tmp_path):
    path = _config_file(
        tmp_path, 'return sg.Sweep(grid=sg.values("total_steps", [10, "many"]), metric="z/t")'
    )
    with pytest.raises(sweep_plan.SweepError, match=r"sweep point 1 \{'total_steps': 'many'\}"):
        sweep_plan.load_plan(path)


def test_unknown_config_argument_names_the_point(tmp_path):
    path = _config_file(tmp_path, 'return sg.Sweep(grid=sg.values(":stpes", [5]), metric="z/t")')
    with pytest.raises(sweep_plan.SweepError, match=r"sweep point 0 .*stpes"):
        sweep_plan.load_plan(path)


def test_empty_grid_is_an_error(tmp_path):
    path = _config_file(tmp_path, 'return sg.Sweep(grid=[], metric="z/t")')
    with pytest.raises(sweep_plan.SweepError, match="grid is empty"):
        sweep_plan.load_plan(path)


def test_two_points_sharing_a_workdir_are_refused(tmp_path):
    # 1e-3 and 0.001 are one value: both points would train in "lr=0.001".
    path = _config_file(
        tmp_path, 'return sg.Sweep(grid=sg.values("optim.lr", [1e-3, 0.0010000001]), metric="z/t")'
    )
    with pytest.raises(sweep_plan.SweepError, match=r"points 0 .* and 1 .* share the workdir"):
        sweep_plan.load_plan(path)


def test_a_root_holding_another_sweep_is_refused(tmp_path):
    a = _config_file(tmp_path, 'return sg.Sweep(grid=sg.values("optim.lr", [1e-3]), metric="z/t")')
    b = _config_file(
        tmp_path, 'return sg.Sweep(grid=sg.values("optim.lr", [2e-3]), metric="z/t")', "b.py"
    )
    root = str(tmp_path / "root")
    sweep_study.open_study(root, sweep_plan.load_plan(a))
    sweep_study.open_study(root, sweep_plan.load_plan(a))  # the same sweep reopens
    with pytest.raises(sweep_study.SweepMismatchError, match="different sweep.*delete .*journal"):
        sweep_study.open_study(root, sweep_plan.load_plan(b))
    # The CLI says so too, before starting any worker, with exit code 2.
    assert sweep.main([f"--config={b}", f"--workdir={root}"]) == 2


def test_dry_run_lists_points_and_touches_nothing(tmp_path, capsys):
    root = tmp_path / "root"
    assert (
        sweep.main(["--config=experiments/configs/clip/tiny.py", f"--workdir={root}", "--dry-run"])
        == 0
    )
    out = capsys.readouterr().out
    assert "grid of 4 points" in out and f"{root}/loss=sigmoid,lr=0.003" in out
    assert not root.exists()


def test_search_space_fields_are_checked(tmp_path):
    path = _config_file(
        tmp_path,
        'return sg.Sweep(search=sg.Search({"optim.lrx": sg.loguniform(1e-4, 1e-2)}, n_trials=3),'
        ' metric="z/t")',
    )
    with pytest.raises(sweep_plan.SweepError, match="lrx"):
        sweep_plan.load_plan(path)


@pytest.mark.parametrize(
    "launcher, job_file, needle",
    [
        ("slurm", "sweep_workers.sbatch", "#SBATCH --array=1-4"),
        ("skypilot", "sweep_worker.yaml", "run: |"),
    ],
)
def test_cluster_launchers_write_worker_jobs_and_say_how_to_submit(
    tmp_path, monkeypatch, capsys, launcher, job_file, needle
):
    monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))  # no sbatch / sky here
    root = tmp_path / "root"
    args = [
        "--config=experiments/configs/clip/tiny.py",
        f"--workdir={root}",
        "--launcher",
        launcher,
    ]
    assert sweep.main(args) == 2
    err = capsys.readouterr().err
    assert "is not installed here" in err and job_file in err
    text = (root / job_file).read_text()
    assert needle in text and "experiments.sweep --worker" in text and "--max-points=1" in text
    if launcher == "slurm":  # the job runs from the repo root, whatever directory it starts in
        assert f"\ncd {ROOT}\n" in text


def test_a_training_process_imports_the_repo_from_any_directory(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "import experiments.sweeps.grid"],
        cwd=tmp_path,
        env=sweep_worker.child_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
