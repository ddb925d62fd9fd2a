"""blochnet against the reference code (diffBloch 0.2.0rc1) on the bundled quartz, in one run.

Runs the reference refinement and ``blochnet refine --example quartz`` (defaults) one after
the other, each in its own subprocess on the CPU, and prints wall time, peak memory (maximum
resident set size of the child, from ``wait4``; for blochnet the larger of that and the
largest stage peak of its report.json, since it resets the kernel's high-water mark at
every stage and the child's rusage then holds only the last stage's), R1(obs)
pooled and frame mean, the number of observations, and the ratios reference / blochnet
measured in this run, with the CPU time of each child (user + system) beside its wall time
and the load average before and after each side. The same goes to ``OUT/benchmark.json``.

    python benchmarks/reference_quartz.py [--reference-venv PATH] [--epochs N] [--out DIR]
                                          [--threads 1] [--only reference|blochnet]

Both children get the same environment, with OMP_NUM_THREADS = MKL_NUM_THREADS = --threads
(default 1): on a shared 2-core machine two threads per process oversubscribe the cores and
slow both programs several-fold (the reference's orientation pre-fit: 1–2 s per frame with
one thread, 7–13 s with two, at load 8). ``--epochs`` shortens both for development;
``--reference-frames N`` (development only) gives the reference the first N frames.

The reference runs in a venv of its own (Python 3.12), outside every repository:

    PYENV_VERSION=3.12.1 python3.12 -m venv /work/ref/diffbloch-venv
    /work/ref/diffbloch-venv/bin/pip install diffbloch-0.2.0rc1-py3-none-any.whl
    (the wheel from ``pip download diffbloch==0.2.0rc1 --no-deps``)

Reference settings (the paper's quartz run): 42 rocking tilts, g_max 1.6 Å⁻¹, sg_max
0.01 Å⁻¹, no absorption, Nelder–Mead orientation pre-fit (simplex edge 0.05°, 60 iterations,
tolerances 1e-3, seed thickness 850 Å, no thickness grid search), apparent-thickness network
1000–2000 Å, Adam lr 1e-3, 40 epochs, positions and ADPs refined, wR2 objective.

R values. blochnet's come from its report.json: pooled R1(obs) over every (hkl, frame)
observation with Io > 3σ, and the mean of per-frame R1(obs). The reference reports one
number, the mean over rotations of the per-rotation R1(obs) = Σ|√Io − √(k Ic)| / Σ√Io over
the matched reflections with Io > 3σ, k grid-searched per rotation to minimise that R1
(its refinement_report.txt, "mean R_obs"). The pooled value of the reference is recomputed
here from the same per-rotation sums: its final per-rotation scoring is wrapped in the
reference subprocess to keep numerator, denominator and the count of Io > 3σ observations
of each rotation (the wrapper adds one scale search per rotation after refinement, nothing
to the refinement). Pooled = Σ numerators / Σ denominators, with each rotation's own k.

Benchmarks are not tests: this file is not collected by the test suite.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "src" / "blochnet" / "examples"
DEFAULT_VENV = Path("/work/ref/diffbloch-venv")
REFERENCE_VERSION = "0.2.0rc1"
N_FRAMES = 99  # virtual frames in the bundled quartz.cif_pets

# The paper's settings for quartz (no absorption), as diffBloch's experiment.yaml.
REFERENCE_SETTINGS = {
    "rocking_curve_sampling": 42,
    "g_max": 1.6,
    "sg_max": 0.01,
    "absorption": False,
    "orientation_prefit": "Nelder-Mead (edge 0.05 deg, 60 iterations, xatol = fatol = 1e-3)",
    "seed_thickness_A": 850.0,
    "thickness_nn_A": [1000.0, 2000.0],
    "optimizer": "adam",
    "lr": 1e-3,
    "epochs": 40,
}


def experiment_yaml(epochs: int, frames: int | None = None) -> str:
    s = REFERENCE_SETTINGS
    ignore = [] if frames is None else list(range(frames, N_FRAMES))
    return textwrap.dedent(
        f"""\
        name: blochnet-benchmark-quartz
        inputs:
          structure: quartz.cif
          exp_data: quartz.cif_pets
        sample:
          thicknesses: [{s["seed_thickness_A"]}]
        blochwave:
          coupling_mode: union
          absorption: false
          g_max: {s["g_max"]}
          sg_max: {s["sg_max"]}
          rocking_curve_sampling: {s["rocking_curve_sampling"]}
          ignore_orientations: {ignore}
        preprocess:
          optimize_orientation: true
          optimize_thickness: false
          orientation:
            nelder_mead:
              step_size: 0.05
              max_iterations: 60
              x_tolerance: 0.001
              f_tolerance: 0.001
              penalize_fewer_reflections: true
        loss_metrics:
          residual: wr2
        refinement:
          steps: {epochs}
          thickness_nn:
            enabled: true
            min_thickness: {s["thickness_nn_A"][0]}
            max_thickness: {s["thickness_nn_A"][1]}
            init_seed: 0
          optimizer:
            name: {s["optimizer"]}
            lr: {s["lr"]}
          trainable:
            positions: all
            adp: all
            occupancy: none
          split:
            train_test: false
        """
    )


# Runs inside the reference venv: the reference CLI, with its final per-rotation scoring
# wrapped to keep the per-rotation R1(obs) sums (see the module docstring).
REFERENCE_RUNNER = r"""
import json, sys
import torch
import diffBloch.engine.forward as fw
from diffBloch.app.cli import main
from diffBloch.core.losses import optimal_scale, rbragg, w_rbragg

out_json, argv = sys.argv[1], sys.argv[2:]
captured, state, rows_out = [], {"on": False}, []
_align, _per_rotation = fw.align, fw.RefinementEngine.per_rotation_metrics

def align(*args, **kwargs):
    aligned = _align(*args, **kwargs)
    if state["on"]:
        captured.append(aligned)
    return aligned

def per_rotation_metrics(self, model):
    captured.clear()
    state["on"] = True
    try:
        rows = _per_rotation(self, model)
    finally:
        state["on"] = False
    rows_out.clear()
    with torch.no_grad():
        for row, a in zip(rows, captured, strict=True):
            wr2 = [optimal_scale(a.calculated[t], a.observed[t], a.sigmas[t], metric=w_rbragg)[1]
                   for t in range(a.calculated.shape[0])]
            t = int(torch.argmin(torch.stack(wr2)))
            calc, obs, sig = a.calculated[t], a.observed[t], a.sigmas[t]
            k = optimal_scale(calc, obs, sig, metric=rbragg)[0]
            mask = obs > 3 * sig
            num = ((obs.clamp(min=0).sqrt() - (k * calc).clamp(min=0).sqrt()).abs()[mask]).sum()
            den = obs.clamp(min=0).sqrt()[mask].sum()
            rows_out.append({"rotation": int(row.rotation_index), "r_obs": float(row.r_obs),
                             "wr2": float(row.wr2), "num": float(num), "den": float(den),
                             "n_obs": int(mask.sum()), "n_matched": int(row.n_matched)})
    return rows

fw.align = align
fw.RefinementEngine.per_rotation_metrics = per_rotation_metrics
rc = main(argv)
with open(out_json, "w") as handle:
    json.dump(rows_out, handle)
sys.exit(rc)
"""


def run_child(cmd: list[str], *, log: Path, env: dict[str, str], cwd: Path) -> dict:
    """Run ``cmd``; wall time and the child's maximum resident set size (wait4)."""
    with log.open("w") as handle:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "returncode": proc.returncode,
        "wall_time_s": wall,
        "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,  # ru_maxrss is in KiB on Linux
        "cpu_time_s": usage.ru_utime + usage.ru_stime,
        "log": str(log),
    }


def run_reference(
    venv: Path, out: Path, epochs: int, env: dict[str, str], frames: int | None = None
) -> dict:
    exp = out / "reference"
    if exp.exists():
        shutil.rmtree(exp)
    exp.mkdir(parents=True)
    shutil.copy(EXAMPLES / "quartz.cif", exp / "quartz.cif")
    shutil.copy(EXAMPLES / "quartz.cif_pets", exp / "quartz.cif_pets")
    (exp / "experiment.yaml").write_text(experiment_yaml(epochs, frames))
    runner = out / "reference_runner.py"
    runner.write_text(REFERENCE_RUNNER)
    rows_json = out / "reference_rotations.json"
    cmd = [
        str(venv / "bin" / "python"),
        str(runner),
        str(rows_json),
        "refine",
        str(exp),
        "--device",
        "cpu",
        "--no-checkpoint",
    ]
    print(f"reference: diffBloch {REFERENCE_VERSION}, {epochs} epochs ...", flush=True)
    result = run_child(cmd, log=out / "reference.log", env=env, cwd=out)
    result["program"] = f"diffBloch {REFERENCE_VERSION}"
    result["settings"] = {**REFERENCE_SETTINGS, "epochs": epochs}
    if frames is not None:
        result["settings"]["frames"] = frames
    if result["returncode"] != 0:
        return result
    rows = json.loads(rows_json.read_text())
    result["n_frames"] = len(rows)
    result["n_obs"] = sum(r["n_obs"] for r in rows)
    result["n_matched"] = sum(r["n_matched"] for r in rows)
    result["r_obs"] = sum(r["num"] for r in rows) / sum(r["den"] for r in rows)
    result["r_obs_frame_mean"] = sum(r["r_obs"] for r in rows) / len(rows)
    recomputed = sum(r["num"] / r["den"] for r in rows) / len(rows)
    result["frame_mean_check"] = abs(recomputed - result["r_obs_frame_mean"])
    report = exp / "refinement_report.txt"
    if report.exists():
        text = report.read_text()
        m = re.search(r"mean R_obs = ([0-9.]+)", text)
        result["report_mean_r_obs"] = float(m.group(1)) if m else None
        m = re.search(r"elapsed\s*:\s*([0-9.]+) s", text)
        result["report_elapsed_s"] = float(m.group(1)) if m else None
    return result


def run_blochnet(out: Path, epochs: int | None, env: dict[str, str]) -> dict:
    dest = out / "blochnet"
    if dest.exists():
        shutil.rmtree(dest)
    env = {
        **env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")])),
    }
    cmd = [sys.executable, "-m", "blochnet", "refine", "--example", "quartz", "--out", str(dest)]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    print(f"blochnet: defaults{'' if epochs is None else f', {epochs} epochs'} ...", flush=True)
    result = run_child(cmd, log=out / "blochnet.log", env=env, cwd=out)
    result["program"] = "blochnet " + blochnet_version(env)
    if result["returncode"] != 0:
        return result
    report = json.loads((dest / "report.json").read_text())
    config = dest / "config.json"
    settings = {"config": "defaults" if epochs is None else f"defaults, --epochs {epochs}"}
    if config.exists():
        settings["resolved"] = str(config)
    result["settings"] = settings
    for key in ("r_obs", "r_obs_frame_mean", "wr2", "n_obs"):
        result[key] = report.get(key)
    result["report_wall_time_s"] = report.get("wall_time_s")
    timings = report.get("timings") or {}
    result["report_peak_memory_gb"] = timings.get("peak_memory_gb")
    # blochnet resets the kernel's high-water mark at every stage to time each stage's
    # peak (/proc/self/clear_refs), and the rusage of the child then holds only the last
    # stage's: its own largest stage peak is the process's peak
    result["wait4_peak_rss_gb"] = result["peak_rss_gb"]
    if result["report_peak_memory_gb"] is not None:
        result["peak_rss_gb"] = max(result["peak_rss_gb"], result["report_peak_memory_gb"])
    return result


def blochnet_version(env: dict[str, str]) -> str:
    code = "import blochnet; print(getattr(blochnet, '__version__', '?'))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return proc.stdout.strip() or "?"


def machine() -> dict:
    info = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        info["memory_gb"] = round(int(mem) * 1024 / 1e9, 1)
        cpu = [
            line
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        info["cpu"] = cpu[0].split(":", 1)[1].strip() if cpu else "?"
    except OSError:
        pass
    return info


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _fmt(value, spec: str, scale: float | None = None) -> str:
    if value is None:
        return "-"
    return format(value if scale is None else value * scale, spec)


def table(ref: dict | None, bn: dict | None) -> str:
    head = (
        f"{'program':<20} {'wall s':>8} {'CPU s':>8} {'peak GB':>8} {'R1obs pooled':>13} "
        f"{'R1obs frames':>13} {'n_obs':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in (ref, bn):
        if r is None:
            continue
        if r["returncode"] != 0:
            lines.append(f"{r['program']:<20} failed (exit {r['returncode']}), see {r['log']}")
            continue
        lines.append(
            f"{r['program']:<20} {r['wall_time_s']:>8.1f} {r['cpu_time_s']:>8.1f} "
            f"{r['peak_rss_gb']:>8.2f} "
            f"{_fmt(r.get('r_obs'), '.2f', 100):>11} % "
            f"{_fmt(r.get('r_obs_frame_mean'), '.2f', 100):>11} % "
            f"{_fmt(r.get('n_obs'), 'd'):>6}"
        )
    return "\n".join(lines)


def ratios(ref: dict, bn: dict) -> dict:
    out = {}
    for key in ("wall_time_s", "cpu_time_s", "peak_rss_gb", "r_obs", "r_obs_frame_mean"):
        a, b = ref.get(key), bn.get(key)
        out[key] = a / b if a is not None and b else None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--reference-venv",
        type=Path,
        default=DEFAULT_VENV,
        help=f"venv with diffBloch {REFERENCE_VERSION} (default {DEFAULT_VENV})",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs for both programs (default: reference 40, blochnet its default)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: a new temporary folder)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS/MKL_NUM_THREADS of both children (default 1; "
        "0 leaves the environment as it is)",
    )
    parser.add_argument(
        "--reference-frames",
        type=int,
        default=None,
        metavar="N",
        help="development only: the reference uses the first N frames",
    )
    parser.add_argument(
        "--only",
        choices=("reference", "blochnet"),
        default=None,
        help="run one side only (no ratios)",
    )
    args = parser.parse_args(argv)

    python = args.reference_venv / "bin" / "python"
    if args.only != "blochnet" and not python.exists():
        sys.exit(
            f"error: no reference venv at {args.reference_venv}; create it with "
            f"'PYENV_VERSION=3.12.1 python3.12 -m venv {args.reference_venv} && "
            f"{args.reference_venv}/bin/pip install "
            f"diffbloch-{REFERENCE_VERSION}-py3-none-any.whl' "
            f"(wheel from 'pip download diffbloch=={REFERENCE_VERSION} --no-deps'), "
            "or pass --reference-venv PATH"
        )
    out = (args.out or Path(tempfile.mkdtemp(prefix="bench-reference-quartz-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.threads > 0:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))

    record = {
        "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": args.threads or "environment",
        "load_before": load(),
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    ref = bn = None
    if args.only != "blochnet":
        ref_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
        ref = run_reference(
            args.reference_venv,
            out,
            args.epochs or REFERENCE_SETTINGS["epochs"],
            ref_env,
            args.reference_frames,
        )
        record["reference"] = ref
        record["load_after_reference"] = load()
    if args.only != "reference":
        bn = run_blochnet(out, args.epochs, env)
        record["blochnet"] = bn
        record["load_after_blochnet"] = load()
    ok = all(r is None or r["returncode"] == 0 for r in (ref, bn))
    if ref and bn and ok:
        record["ratios_reference_over_blochnet"] = ratios(ref, bn)

    print()
    print(
        f"{record['date_utc']}  {record['machine'].get('cpu', '?')}, "
        f"{record['machine']['cpus']} CPUs, "
        f"threads {record['threads']}, load {record['load_before']} before"
    )
    print(table(ref, bn))
    if "ratios_reference_over_blochnet" in record:
        q = record["ratios_reference_over_blochnet"]
        print(
            f"{'reference/blochnet':<20} {q['wall_time_s']:>8.2f} {q['cpu_time_s']:>8.2f} "
            f"{q['peak_rss_gb']:>8.2f} "
            f"{q['r_obs']:>13.2f} {q['r_obs_frame_mean']:>13.2f}"
        )
    loads = [
        f"{name} {record[key][0]}"
        for name, key in (
            ("before", "load_before"),
            ("after reference", "load_after_reference"),
            ("after blochnet", "load_after_blochnet"),
        )
        if key in record
    ]
    print("load average (1 min): " + ", ".join(loads))
    if ref and ref["returncode"] == 0:
        as_reported = _fmt(ref.get("report_mean_r_obs"), ".2f", 100)
        print(f"reference R1(obs) frame mean as in its report: {as_reported} %")
    (out / "benchmark.json").write_text(json.dumps(record, indent=2))
    print(f"written {out / 'benchmark.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
