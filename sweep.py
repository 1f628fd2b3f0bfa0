"""Run a grid of training runs (seeds x settings of the stage scripts) as jobs through
submitit: on this machine (default) or on a SLURM cluster.

    python sweep.py experiments/grids/methods.toml                 # here, one run at a time
    python sweep.py experiments/grids/methods.toml --seeds 0 1 2
    python sweep.py experiments/grids/select-seed1.toml experiments/grids/length.toml \\
        --runs-per-device 8                                        # one pool, two folders
    python sweep.py GRID --executor slurm --partition gpu --gpus-per-node 1 \\
        --array-parallelism 16 --time-min 60 --sbatch account=myproject

A grid file (TOML) names a folder, the seeds and one or more stages:

    folder = "runs/my-study"          # checkpoints, run records, logs/ and (by default) plots/
    seeds = [0, 1, 2]
    [[stage]]
    script = "train_student.py"
    name = "student_{loss}_T{temperature}_seed{seed}"   # optional; default: every axis
    flags = {teacher = "checkpoints/teacher.pt"}        # the same for every run
    grid = [{loss = ["kd+ce", "kd"], temperature = [2, 4]}, {loss = ["dist"], temperature = [1]}]

Each dict of `grid` is expanded to the product of its lists, like scikit-learn's
ParameterGrid; a flag set to true is passed bare (`--logit-standardize`), false omits it.
`{folder}`, `{seed}` and `{teacher}` (the seed's teacher run: `teacher` for seed 0,
`teacher_seed<s>` else, as make names them) may appear in names and flag values: a run whose
flag names another run's checkpoint (a student's `teacher`) starts after that run has finished.
A finished run (its records say so, with the same flags) is skipped unless it is stale (its
data, teacher or recipe changed since: what `make` trains again); one with a checkpoint is
resumed with `--resume --restart-if-changed`, as `make` does; a failed run is reported with
its log and the others go on. Locally, `--runs-per-device N` runs N at a time on each GPU,
and `--stop-after MINUTES` stops them cleanly when a lent machine's time is up. The grid is
copied into <folder>/sweeps/ with the code's commit, and a table of the runs (mean ± std
over seeds) ends the sweep. Several grids run as one pool, in their order, each into its
own folder: no device waits between them, and a run of one may need a run of another (the
teacher it names); a checkpoint two grids both name runs once.
"""
import kd.startup  # noqa: F401  (first: a Ctrl-C during the imports below is one line)

# isort: split
import argparse
import contextlib
import fnmatch
import importlib
import io
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError, UncompletedJobError

from kd import cli
from kd.interrupts import STOP_SIGNALS, interrupts_deferred
from kd.records import git_commit, record_paths, test_record_matches
from kd.results import run_table, seed_table, variant_rank

ROOT = Path(__file__).resolve().parent
SCRIPTS = ("train_teacher.py", "train_student.py", "train_ema.py")
POLL_SECONDS = 2
STOP_WAIT_SECONDS = 120  # for a stopped training process to end (a stop takes a second or two)


class GridError(ValueError):
    """A grid file or sweep flag that cannot be run: said in one line."""


@dataclass
class Run:
    name: str
    script: str
    settings: dict  # flag name (as in the grid) -> value
    folder: str
    needs: list = field(default_factory=list)  # keys of the runs whose checkpoint this one reads
    label: str = ""  # how the sweep's output names it: its name, or folder/name among folders

    def __post_init__(self):
        self.label = self.label or self.name

    @property
    def out(self):
        return Path(self.folder) / f"{self.name}.pt"

    @property
    def key(self):
        """What tells runs apart across grids: the checkpoint they write."""
        return str(self.out)

    def command(self):
        resume = ["--resume", "--restart-if-changed"] if self.out.exists() else []
        plots = [] if "plots-dir" in self.settings else ["--plots-dir", f"{self.folder}/plots"]
        return [sys.executable, self.script, *as_flags(self.settings), "--out", str(self.out),
                *plots, *resume]


def as_flags(settings):
    flags = []
    for key, value in settings.items():
        if value is True:
            flags.append(f"--{key}")
        elif isinstance(value, list):
            flags += [f"--{key}", *map(str, value)]
        elif value is not False:
            flags += [f"--{key}", str(value)]
    return flags


def parse_flags(text):
    """'--epochs 1 --dry-run' -> {'epochs': '1', 'dry-run': True}: extra flags given on the
    command line, merged into every run's settings."""
    # argparse's --flag=value form, split as the scripts read it
    try:
        split = shlex.split(text or "")
    except ValueError as e:  # an unclosed quote
        raise GridError(f"--flags: {e}") from None
    tokens = [part for token in split
              for part in (token.split("=", 1) if token.startswith("--") else [token])]
    settings = {}
    i = 0
    while i < len(tokens):
        if not tokens[i].startswith("--"):
            raise GridError(f"--flags: expected a --flag, got {tokens[i]!r}")
        values = list(itertools.takewhile(lambda t: not t.startswith("--"), tokens[i + 1:]))
        settings[tokens[i][2:]] = (True if not values else values[0] if len(values) == 1
                                   else values)
        i += 1 + len(values)
    return settings


def load_pool(args, extra):
    """({grid file: its folder}, the runs of every grid as one pool) with `extra` flags."""
    grids, runs = {}, []
    for path in args.grids:
        grid = load_grid(path)
        folder = args.folder or grid.get("folder") or f"runs/sweeps/{Path(path).stem}"
        grids[path] = folder
        runs.append(expand(grid, folder, args.seeds or grid.get("seeds", [0]), extra))
    return grids, combine(runs)


def retrained_by_flags(runs, plain):
    """Refuse --flags that would train runs with a checkpoint again from the start: a
    trial's '--epochs 1' (or another --data-root) on the grid's own folder trained its every
    finished run again over its results, and restarted an interrupted one from epoch 0
    (its `--resume --restart-if-changed` finds the recipe changed). `plain`: the same runs
    without the flags (by key); the reasons the flags add count. A grid changed on purpose
    trains them again, as make does."""
    hit, kinds = {}, set()
    for run in runs:
        if run.out.exists() and run.key in plain:
            before = stale(plain[run.key])
            if added := [reason for reason in stale(run) if reason not in before]:
                hit[run.label] = added
                kinds.add("finished" if ran_to_end(run) is not None else "interrupted")
    if hit:
        label, reasons = next(iter(hit.items()))
        more = f"; and {len(hit) - 1} more" if len(hit) > 1 else ""
        refuse(f"--flags would train {len(hit)} {' or '.join(sorted(kinds))} "
               f"run{'s' * (len(hit) != 1)} again from the start ({label}: "
               f"{'; '.join(reasons)}{more}): give the trial a --folder of its own, or set "
               f"the flags in the grid to change its runs")


def refuse(message):
    """A bad command or grid: one line and exit status 2, as the training scripts do."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def load_grid(path):
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise GridError(f"cannot read the grid {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise GridError(f"{path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise GridError(f"{path} is not valid TOML: {e}") from None


GRID_KEYS = ("folder", "seeds", "flags", "stage")
STAGE_KEYS = ("script", "name", "seeds", "flags", "grid")


def unknown_key(table, known):
    """The first key of `table` the sweep does not read (it would be dropped unsaid), or None."""
    return next((key for key in table if key not in known), None)


def check_types(table, where):
    """A grid's or a stage's seeds, flags and name as the sweep reads them (a wrong type
    was a traceback); `seed` set anywhere but `seeds` (its runs would all train that seed,
    named for others) is refused."""
    seeds = table.get("seeds", [])
    if not isinstance(seeds, list) or not all(type(s) is int for s in seeds):
        raise GridError(f"{where}seeds must be a list of integers, got {seeds!r}")
    if not isinstance(table.get("flags", {}), dict):
        raise GridError(f"{where}flags must be a table, got {table['flags']!r}")
    if "seeds" in table and not seeds:
        raise GridError(f"{where}seeds must be a list of integers, got none")
    if "seed" in table.get("flags", {}):
        raise GridError(f"{where}flags set 'seed': seeds come from `seeds`")
    if not isinstance(table.get("name", "-"), str) or not table.get("name", "-"):
        raise GridError(f"{where}name must be a non-empty string, got {table['name']!r}")
    if not isinstance(table.get("folder", ""), str):
        raise GridError(f"{where}folder must be a string, got {table['folder']!r}")


def expand(grid, folder, seeds, extra=None):
    """The runs a grid describes, in order, each with the runs it needs."""
    if (key := unknown_key(grid, GRID_KEYS)) is not None:
        raise GridError(f"unknown key {key!r} (a grid takes: {', '.join(GRID_KEYS)})")
    check_types(grid, "")
    if "seed" in (extra or {}):
        raise GridError("--flags sets 'seed': seeds come from --seeds")
    if "out" in (extra or {}):
        raise GridError("--flags sets 'out': the sweep names each run's checkpoint "
                        "(<folder>/<name>.pt); give --folder, or a stage's name")
    stages = grid.get("stage")
    if not stages:
        raise GridError("the grid has no [[stage]]")
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
        raise GridError(f"stage must be a list of tables ([[stage]]), got {stages!r}")
    runs = []
    for number, stage in enumerate(stages, 1):
        if (key := unknown_key(stage, STAGE_KEYS)) is not None:
            raise GridError(f"stage {number}: unknown key {key!r} (a stage takes: "
                            f"{', '.join(STAGE_KEYS)})")
        check_types(stage, f"stage {number}: ")
        script = stage.get("script")
        if script not in SCRIPTS:
            raise GridError(f"stage {number}: script must be one of {', '.join(SCRIPTS)}, "
                            f"got {script!r}")
        if overridden := sorted(set(extra or {}) & set(stage.get("flags", {}))):
            raise GridError(f"--flags sets {overridden[0]!r}, which stage {number} sets itself: "
                            f"its runs would train another value than their grid says; "
                            f"change it in the grid")
        subgrids = stage.get("grid", [{}])
        subgrids = [subgrids] if isinstance(subgrids, dict) else subgrids
        if not subgrids or not isinstance(subgrids, list) or not all(isinstance(g, dict)
                                                                       for g in subgrids):
            raise GridError(f"stage {number}: grid must be a table or a non-empty list of "
                            f"tables")
        for subgrid in subgrids:
            for key, values in subgrid.items():
                if not isinstance(values, list) or not values:
                    raise GridError(f"stage {number}: grid {key!r} must be a non-empty list")
            if "seed" in subgrid:
                raise GridError(f"stage {number}: grid axis 'seed': seeds come from `seeds`")
            if overridden := sorted(set(extra or {}) & set(subgrid)):
                raise GridError(f"--flags sets {overridden[0]!r}, an axis of stage {number}: "
                                f"its runs would all train that value, named for others")
            axes = list(subgrid)
            default_name = "_".join([Path(script).stem.removeprefix("train_")]
                                    + [f"{axis}={{{axis}}}" for axis in axes] + ["seed{seed}"])
            template = stage.get("name", default_name)
            for values in itertools.product(*subgrid.values()):
                for seed in stage.get("seeds", seeds):
                    combo = dict(zip(axes, values))
                    fill = {"folder": folder, "seed": seed, "teacher": teacher_name(seed)}
                    settings = {**grid.get("flags", {}), **stage.get("flags", {}), **combo,
                                **(extra or {}), "seed": seed}
                    try:
                        settings = {key: value.format(**fill) if isinstance(value, str)
                                    else value for key, value in settings.items()}
                    except (KeyError, IndexError, ValueError) as e:
                        raise GridError(f"stage {number}: a flag's value cannot be filled: "
                                        f"{e} (it may name {', '.join(fill)})") from None
                    try:
                        name = template.format(**{**fill, **{k: name_part(v)
                                                             for k, v in combo.items()}})
                    except (KeyError, IndexError, ValueError) as e:
                        raise GridError(f"stage {number}: name {template!r} cannot be "
                                        f"filled: {e}") from None
                    if "/" in name:
                        raise GridError(f"stage {number}: run name {name!r} holds a '/': it "
                                        f"names a checkpoint in {folder}")
                    runs.append(Run(name, script, settings, folder))
    names = [run.name for run in runs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise GridError(f"two runs would share a checkpoint ({', '.join(twice)}): put the "
                        f"axes that tell them apart into the stage's name")
    return link(runs)


def link(runs):
    """Each run's `needs`: the runs among `runs` whose checkpoint one of its flags names."""
    keys = {run.key for run in runs}
    for run in runs:
        run.needs = [str(Path(v)) for v in run.settings.values()
                     if isinstance(v, str) and str(Path(v)) in keys]
    return runs


def combine(grids):
    """The runs of several grids (lists of runs) as one pool, in order: a checkpoint that two
    grids both name is run once, if they give it the same flags; a run may need a run of
    another grid (a teacher it names); among several folders, each run is labelled
    folder/name."""
    by_key = {}
    for run in itertools.chain(*grids):
        first = by_key.setdefault(run.key, run)
        if (first.script, first.settings) != (run.script, run.settings):
            raise GridError(f"two grids name {run.out} with different flags: give one of "
                            f"them another name or folder")
    several = len({run.folder for run in by_key.values()}) > 1
    return link([replace(run, label=f"{run.folder}/{run.name}" if several else run.name)
                 for run in by_key.values()])


def select(runs, patterns):
    """The runs whose names match one of the shell patterns (all of them without any)."""
    if not patterns:
        return runs
    chosen = [run for run in runs if any(fnmatch.fnmatchcase(run.name, p) for p in patterns)]
    if not chosen:
        raise GridError(f"no run's name matches {' '.join(patterns)} (--list names them all)")
    return chosen


def left_out_needs(selected, pool):
    """Refuse a run of `selected` (--only's) that needs a run of the grids it leaves out
    and that has not finished: the run would start and fail in its job log for want of that
    checkpoint."""
    by_key = {run.key: run for run in pool}
    chosen = {run.key for run in selected}
    for run in selected:
        for need in run.needs:
            if need not in chosen and ran_to_end(by_key[need]) is None:
                refuse(f"--only: {run.label} needs {by_key[need].label}, which it leaves out "
                       f"and which has not finished: add it to --only, or run it first")


def teacher_name(seed):
    """`{teacher}` in a grid: the name of the seed's teacher run as make names it, so a
    student can distil from its own seed's teacher (`teacher = "{folder}/{teacher}.pt"`)."""
    return "teacher" if seed == 0 else f"teacher_seed{seed}"


def name_part(value):
    """A grid value as it appears in a run's name: [32, 64] -> 32-64, True -> true, a path
    ckpt/teacher.pt -> ckpt-teacher.pt (a name holds no folder)."""
    if isinstance(value, list):
        return "-".join(map(str, value))
    return (str(value).lower() if isinstance(value, bool) else str(value)).replace("/", "-")


def finished(run):
    """Whether the run's records say it ran to its end (ran_to_end) with the flags this
    sweep gives it. A run records what `--device auto` and `--precision auto` resolved to:
    "auto" matches any (whether it would resolve otherwise now is stale()'s question, as
    for make)."""
    config = ran_to_end(run)
    return config is not None and all(
        (key in RESOLVED and value == "auto") or same(config.get(key.replace("-", "_")), value)
        for key, value in run.settings.items())


RESOLVED = ("device", "precision")  # the flags whose "auto" a run records resolved


def ran_to_end(run):
    """The run's recorded config where its records say it ran to its last epoch (and was
    tested, unless this sweep's flags for it skip the test: a probe's run reused by a grid
    that tests is resumed, which writes the test record), whatever other flags it ran with
    (a run copied from another grid, with its own plots folder, say); else None."""
    paths = record_paths(run.out)
    try:
        config = json.loads(paths["config"].read_text())
        last = pd.read_csv(paths["metrics"])["epoch"].iloc[-1]
    except (OSError, ValueError, KeyError, IndexError):
        return None
    if not run.out.exists() or last != config.get("epochs"):
        return None
    if not run.settings.get("skip-test") and not test_record_matches(
            paths["test"], config.get("run_id"), int(last)):
        return None
    return config


def stale(run):
    """Why a finished run is stale to its command, as the `--resume --restart-if-changed` the
    sweep would run it with decides (its data, teacher or recipe, defaults included, changed
    since it ran: what make trains again); empty when it is current. Asked of the run's own
    script in this process, so a sweep skips exactly the runs make would skip."""
    from kd.runs import stale_reasons
    try:
        return stale_reasons(*parsed(run))
    except cli.UserError as e:
        return [str(e)]


def repeats(run):
    """The finished run (its checkpoint) that `run`, not finished, would repeat under another
    name (kd.runs.repeated_run); None where there is none or the run cannot be parsed (it
    says why when it runs)."""
    from kd.runs import repeated_run
    try:
        return repeated_run(*parsed(run))
    except Exception:  # advisory only: a record it cannot read must not stop the sweep
        return None


def parsed(run):
    """(args, RunKind) of the run's command, parsed by its own script in this process; a
    flag the script no longer takes is a UserError with argparse's line."""
    script = importlib.import_module(Path(run.script).stem)
    with contextlib.redirect_stderr(io.StringIO()) as errors, \
            contextlib.redirect_stdout(io.StringIO()):
        try:
            return script.parse(run.command()[2:])
        except SystemExit:
            said = errors.getvalue().strip().splitlines()
            raise cli.UserError(said[-1] if said else f"{run.script} ends on these flags "
                                f"without training (--help?)") from None


def refusal(run):
    """What the run's own script would refuse in its command (argparse's line, or the range
    and method checks every training script makes first), else None."""
    try:
        cli.check_args(parsed(run)[0])
    except cli.UserError as e:
        return str(e)
    return None


def same(recorded, wanted):
    if isinstance(wanted, bool) or wanted is None:
        return bool(recorded) == bool(wanted)
    if isinstance(wanted, list) or isinstance(recorded, list):
        wanted = wanted if isinstance(wanted, list) else [wanted]
        return isinstance(recorded, list) and len(recorded) == len(wanted) and all(
            same(r, w) for r, w in zip(recorded, wanted))
    try:
        return float(recorded) == float(wanted)
    except (TypeError, ValueError):
        return str(recorded) == str(wanted)


def make_executor(args, logs):
    if args.executor == "local":
        executor = submitit.LocalExecutor(folder=logs)
        executor.update_parameters(timeout_min=args.time_min)
        return executor
    executor = submitit.AutoExecutor(folder=logs, cluster="slurm")
    executor.update_parameters(
        timeout_min=args.time_min, name=args.job_name, slurm_partition=args.partition,
        gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_gb, slurm_array_parallelism=args.array_parallelism,
        # a job whose needed job failed is cancelled, not left pending for ever
        slurm_additional_parameters={"kill-on-invalid-dep": "yes", **dict(args.sbatch)})
    return executor


class TrainingCommand:
    """A run's command as a submitit job. Written here, not submitit's CommandFunction, for
    stopping: CommandFunction pipes the training process's output through the job's own
    process, which a cancelled job's controller kills a second after its Ctrl-C, leaving
    the training process never interrupted, its messages lost, and still running after
    the sweep's table. Here the training process writes to the job's log files itself, and
    its pid is kept in `pid_file` while it runs, so that a stop (`stop_jobs`)
    interrupts it directly and waits for it to save."""

    def __init__(self, command, pid_file, threads=None):
        """`command`: the argument list, or a function giving it as the job starts (a job
        requeued after a preemption resumes the checkpoint its first attempt saved)."""
        self.command, self.pid_file, self.threads = command, Path(pid_file), threads

    def __call__(self):
        command = self.command() if callable(self.command) else self.command
        print(f"command: {shlex.join(command)}", flush=True)
        env = dict(os.environ)
        if self.threads and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(self.threads)
        process = None
        try:
            # a Ctrl-C before the pid file names the process reaches this job instead
            # (stop_jobs), as may submitit's time-limit signal: each waits until the process
            # can be passed a Ctrl-C
            with interrupts_deferred((*STOP_SIGNALS, time_limit_signal())):
                process = subprocess.Popen(ignoring_time_limit(command), cwd=ROOT, env=env)
                self.pid_file.write_text(str(process.pid))
            code = process.wait()
        except BaseException as stop:  # cancelled (Ctrl-C), or submitit's signal at the
            # job's time limit: the run saves its last complete epoch, then stops
            if process is None:
                raise
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            code = process.wait()
            if not isinstance(stop, KeyboardInterrupt):
                raise
        finally:
            self.pid_file.unlink(missing_ok=True)
        if code:
            raise subprocess.CalledProcessError(code, command)

    def checkpoint(self, *args, **kwargs):
        """submitit's hook at the job's time limit or a preemption: the job is requeued (on
        SLURM, or by the local executor), its command built anew as it starts, so it
        resumes the last complete epoch its training process saved; the process itself is
        stopped as the job exits (above). Without it a timed-out job was not requeued.
        submitit gives up after the executor's max_num_timeout time limits. A job the sweep
        has stopped (`stop_jobs`) is not requeued: its time limit may come in the same
        moment as the stop."""
        if stop_marker(self.pid_file).exists():
            return None
        return submitit.helpers.DelayedSubmission(
            TrainingCommand(self.command, self.pid_file, self.threads))


# Execs the command with one signal ignored, a disposition that survives exec (a handler
# would not); a Popen preexec_fn would run Python between fork and exec, unsafe with threads.
IGNORE_THEN_EXEC = ("import os, signal, sys; signal.signal(int(sys.argv[1]), signal.SIG_IGN); "
                    "os.execvp(sys.argv[2], sys.argv[2:])")


def ignoring_time_limit(command):
    """`command` started with the time-limit signal ignored. SLURM sends it (submitit's
    --signal=USR2@90) to every process of the job step, the training process too, whose
    default action for it is to die mid-epoch, maybe between its checkpoint and records;
    the job stops it with a Ctrl-C instead (above), which it saves and exits on."""
    return [sys.executable, "-c", IGNORE_THEN_EXEC, str(int(time_limit_signal())), *command]


def time_limit_signal():
    """The signal submitit's job gets at its time limit: USR2 unless SUBMITIT_PREEMPT_SIGNAL
    names another, as submitit's private JobEnvironment._usr_sig says where it has it."""
    usr_sig = getattr(submitit.JobEnvironment, "_usr_sig", None)
    return usr_sig() if usr_sig is not None else signal.SIGUSR2


def job_function(run, threads=None):
    return TrainingCommand(run.command, pid_file(run), threads)


def threads_per_run(runs_at_once):
    """The CPU threads each of `runs_at_once` local runs gets (None: torch's default, a
    thread per core): the cores shared out, at least one each. Left to the default, runs
    side by side each start a thread per core and fight over the cores (docs/sweeps.md has
    the measurement). An OMP_NUM_THREADS already set is left as it is."""
    if runs_at_once <= 1:
        return None
    import torch  # its count of cores (physical ones), the default it would use
    return max(1, torch.get_num_threads() // runs_at_once)


def pid_file(run):
    return Path(run.folder) / "logs" / f"{run.name}.pid"


def job_file(run):
    """The SLURM job id of the run's last submission, beside its pid file."""
    return pid_file(run).with_suffix(".job")


def in_flight(runs):
    """{label: where} for each of `runs` an earlier sweep still runs: a training process on
    this machine that its pid file names (a sweep ended while its runs went on, or one still
    running), or a SLURM job still in the queue (a `--no-wait` sweep's). Started again, two
    processes would write one checkpoint; so a job of the run that squeue cannot list (no
    squeue here, or it failed) counts too."""
    found, submitted = {}, []
    for run in runs:
        pid = training_here(run)
        if pid is not None:
            found[run.label] = f"is still training here (process {pid})"
        with contextlib.suppress(OSError):
            submitted.append((run, job_file(run).read_text().strip()))
    if submitted:
        queue = slurm_queue()
        for run, job in submitted:
            if queue is None:  # not known to have ended: submitted again, it might run twice
                found.setdefault(run.label, f"was submitted to SLURM (job {job}), and squeue "
                                 "cannot say whether it has ended (if it has: delete "
                                 f"{job_file(run)})")
            elif job in queue:
                found.setdefault(run.label, f"is still queued or running in SLURM (job {job})")
            else:  # ended: no later sweep needs to ask
                job_file(run).unlink(missing_ok=True)
    return found


def training_here(run):
    """The pid of the run's training process on this machine, from its pid file, or None."""
    try:
        pid = int(pid_file(run).read_text())
    except (OSError, ValueError):  # none, or being written
        return None
    return pid if trains(pid, run) else None


def trains(pid, run):
    """Whether process `pid` is the training process of `run`: its command's --out is the
    run's checkpoint (the pid of a process ended long ago may name another by now), and it
    has not exited (a zombie, not yet waited for by its parent, has: its command reads
    empty). Where /proc cannot say (not Linux), any live process counts, a zombie too."""
    if not Path("/proc/self").exists():
        return alive(pid)
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:  # ended
        return False
    if process_state(pid) in (None, "Z", "X"):  # ended, a zombie, or being reaped
        return False
    if command == [""]:  # starting (not yet the new program) or ending: not sure
        return alive(pid)
    outs = [value for flag, value in zip(command, command[1:]) if flag == "--out"]
    return any((ROOT / out).resolve() == (ROOT / run.out).resolve() for out in outs)


def process_state(pid):
    """The state /proc gives process `pid` (R, S, Z for a zombie, ...), or None once it has
    ended (Linux only: the field after the command name, which may itself hold ")")."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def slurm_queue():
    """The ids of this user's jobs in SLURM's queue, pending or running, an array's tasks
    each (`700_3`), or None where squeue cannot say."""
    try:
        listing = subprocess.run(  # the uid: a user name may not be known in a container
            ["squeue", "--noheader", "--array", "--format=%i", f"--user={os.getuid()}"],
            capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {job for listed in listing.split() for job in array_tasks(listed)}


def array_tasks(listed):
    """The job ids in one of squeue's ids: `700_[0-3,5%2]` (a pending array, as a Slurm that
    ignores --array lists it) is 700_0 to 700_3 and 700_5; any other id is itself."""
    match = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", listed)
    if not match:
        return [listed]
    job, spans = match.groups()
    tasks = []
    for span in spans.split(","):
        first, _, last = span.partition("-")
        tasks += [f"{job}_{task}" for task in range(int(first), int(last or first) + 1)]
    return tasks


def stop_marker(pid_file):
    """The file that tells a job the sweep has stopped it, beside its pid file."""
    return pid_file.with_suffix(".stopped")


def forget_stop(run):
    """Before a run's job starts, locally or on SLURM: a stop of an earlier sweep must not
    keep this job from being requeued at its time limit."""
    stop_marker(pid_file(run)).unlink(missing_ok=True)


def stop_jobs(running, by_key):
    """Ctrl-C to each running local job's training process (which saves its last complete
    epoch and exits), or to the job itself while its training process has not started;
    returns once every job and every training process signalled have ended. A job's end is
    not enough: a terminal's Ctrl-C reaches submitit's job controller too, which kills the
    job's own process a second later, while the training process may still be stopping."""
    signalled = []
    for key, (job, _, _) in running.items():
        with contextlib.suppress(OSError):  # no logs folder yet: no job there to requeue
            stop_marker(pid_file(by_key[key])).touch()
        try:
            pid = int(pid_file(by_key[key]).read_text())
            os.kill(pid, signal.SIGINT)
            signalled.append(pid)
        except (OSError, ValueError):  # no pid yet, or the process has just ended
            job.cancel(check=False)
    for job, _, _ in running.values():
        job.wait()
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while signalled and time.monotonic() < deadline:
        signalled = [pid for pid in signalled if alive(pid)]
        time.sleep(POLL_SECONDS / 10 if signalled else 0)
    if signalled:
        print(f"warning: training processes {', '.join(map(str, signalled))} had not ended "
              f"{STOP_WAIT_SECONDS} s after the stop", file=sys.stderr)


def alive(pid):
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone (another user's: pid reused)
        return False
    return True


def run_here(runs, executors, gpus, per_device=1, stop_at=None):
    """Local jobs, `per_device` at a time on each GPU (in all on a CPU), each started once the
    runs it needs have finished; at `stop_at` (a time.time()) the running jobs are stopped,
    each keeping its last complete epoch, and no more are started. `executors`: one per
    folder, where its runs' job logs go. Returns {label: (status, detail)}. submitit's local
    executor starts every job at once, so when to start them is decided here."""
    slots = [gpu for gpu in gpus for _ in range(per_device)] or [None] * per_device
    threads = threads_per_run(len(slots))
    waiting, running, outcome = list(runs), {}, {}
    by_key = {run.key: run for run in runs}  # the runs needed but not here have finished
    try:
        while waiting or running:
            if stop_at is not None and time.time() >= stop_at:
                stop_jobs(running, by_key)
                for key, (job, _, started) in running.items():  # one may have just finished
                    ended = job_outcome(job, started)
                    outcome[by_key[key].label] = ended if ended[0] == "done" else (
                        "stopped", "at --stop-after; run the sweep again to resume it")
                for run in waiting:
                    outcome[run.label] = ("not run", "--stop-after came first")
                print(f" stopped  at --stop-after: {len(running)} running, {len(waiting)} "
                      f"waiting", flush=True)
                return outcome
            for key in [key for key, (job, *_) in running.items() if job.done()]:
                job, slot, started = running.pop(key)
                slots.append(slot)
                label = by_key[key].label
                outcome[label] = job_outcome(job, started)
                print(f"{outcome[label][0]:>8}  {label}  ({outcome[label][1]})", flush=True)
            for run in list(waiting):
                needs = [by_key[need].label for need in run.needs if need in by_key]
                failed = [need for need in needs if outcome.get(need, ("done",))[0] != "done"]
                if failed:
                    waiting.remove(run)
                    outcome[run.label] = ("not run", f"needs {', '.join(failed)}")
                    print(f" not run  {run.label}  (needs {', '.join(failed)}, which failed)")
                elif slots and all(need in outcome for need in needs):
                    waiting.remove(run)
                    pid = training_here(run)
                    if pid is not None:  # started since this sweep began, by another one
                        outcome[run.label] = ("not run", f"another sweep started it (process "
                                                         f"{pid}); run this one again once "
                                                         "it has ended")
                        print(f" not run  {run.label}  (training in process {pid}, started "
                              "by another sweep)", flush=True)
                        continue
                    slot = slots.pop(0)
                    executor = executors[run.folder]
                    # one left by a process before (a machine restarted mid-run) must not be
                    # signalled by a stop that comes before this job writes its own
                    pid_file(run).unlink(missing_ok=True)
                    forget_stop(run)
                    executor.update_parameters(gpus_per_node=0 if slot is None else 1,
                                               visible_gpus=() if slot is None else (slot,))
                    # a stop that comes as the job starts must find it among those to stop
                    with interrupts_deferred():
                        job = executor.submit(job_function(run, threads))
                        running[run.key] = (job, slot, time.time())
                    print(f" started  {run.label}  (log: {job.paths.stdout})", flush=True)
            time.sleep(POLL_SECONDS if running else 0)
    except (KeyboardInterrupt, BrokenPipeError) as e:
        # stop the jobs too, each keeping its last complete epoch: after a Ctrl-C, or once
        # the output's reader has gone (`sweep.py GRID | head`) and no one watches them
        stop_jobs(running, by_key)
        if isinstance(e, BrokenPipeError):
            print("output closed: the running jobs were stopped, each keeping its last "
                  "complete epoch; run the sweep again to go on", file=sys.stderr)
        raise
    return outcome


def with_dependents(runs, todo):
    """(`todo` with every finished run of `runs` that needs one of them, in the runs' order;
    {such a run's label: the labels it needs among them}). Whether a finished student is
    current was judged against the teacher on disk before anything ran; a teacher that runs
    again may change it, so the student runs after it, with --resume --restart-if-changed
    (a no-op where its teacher stayed the same), as make would."""
    by_key = {run.key: run for run in runs}
    keys, recheck = {run.key for run in todo}, {}
    added = True
    while added:  # a need may come later in a pool of grids, and needs chain
        added = False
        for run in runs:
            needs = [by_key[need].label for need in run.needs if need in keys]
            if needs and run.key not in keys:
                keys.add(run.key)
                recheck[run.label], added = needs, True
    return [run for run in runs if run.key in keys], recheck


def job_outcome(job, started=None):
    """("done", minutes), ("FAILED", the log that says why) or, for a SLURM job cancelled
    because a run it needs failed (kill-on-invalid-dep), ("not run", why) of a finished
    job."""
    try:
        job.result()
    except UncompletedJobError:
        if str(getattr(job, "state", "")).startswith("CANCELLED"):
            return "not run", "a run it needs failed"
        return "FAILED", str(job.paths.stderr)
    return "done", f"{(time.time() - started) / 60:.1f} min" if started else ""


def submit_to_slurm(runs, executors):
    """One job array per depth of dependency (teachers, then the students that need them),
    folder and set of needs, each held by SLURM until the jobs its runs need have succeeded
    (afterok; a seed's students wait for that seed's teacher alone), and cancelled by SLURM
    if one of them fails (kill-on-invalid-dep, set in make_executor). Returns (run, job)
    pairs."""
    by_key, depth, jobs = {run.key: run for run in runs}, {}, {}

    def depth_of(run):  # a need may come later in a pool of grids; one not here is finished
        if run.key not in depth:
            depth[run.key] = 1 + max((depth_of(by_key[need]) for need in run.needs
                                      if need in by_key), default=-1)
        return depth[run.key]
    for run in runs:
        depth_of(run)
    for level in sorted(set(depth.values())):
        for folder, executor in executors.items():
            arrays = {}  # the job ids its runs need -> the runs
            for run in runs:
                if depth[run.key] == level and run.folder == folder:
                    needs = tuple(sorted({jobs[need].job_id for need in run.needs
                                          if need in jobs}))
                    arrays.setdefault(needs, []).append(run)
            for needs, batch in arrays.items():
                executor.update_parameters(
                    slurm_dependency=f"afterok:{':'.join(needs)}" if needs else None)
                for run in batch:
                    forget_stop(run)
                try:
                    with executor.batch():
                        submitted = [executor.submit(job_function(run)) for run in batch]
                except (FailedJobError, FailedSubmissionError) as e:
                    refused_by_sbatch(batch, jobs, by_key, e)
                for run, job in zip(batch, submitted):
                    jobs[run.key] = job
                    job_file(run).parent.mkdir(parents=True, exist_ok=True)
                    job_file(run).write_text(job.job_id)
                    print(f"submitted  {run.label}  (job {job.job_id}, log: "
                          f"{job.paths.stdout})")
    return [(run, jobs[run.key]) for run in runs]


def refused_by_sbatch(batch, jobs, by_key, error):
    """Refuse in one line: sbatch refused `batch`'s array; name the jobs submitted before it
    (`jobs`, by run key), which SLURM still runs, and how to stop them."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    queued = ", ".join(f"job {job.job_id} ({by_key[key].label})" for key, job in jobs.items())
    ids = " ".join(job.job_id for job in jobs.values())
    refuse(f"sbatch refused the jobs of {', '.join(run.label for run in batch)}: {first}"
           + (f"; submitted before them and still queued: {queued}: scancel {ids} to stop them"
              if jobs else ""))


def wait_for(jobs):
    outcome = {}
    for run, job in jobs:
        outcome[run.label] = job_outcome(job)
        print(f"{outcome[run.label][0]:>8}  {run.label}  {outcome[run.label][1]}", flush=True)
    return outcome


def summary(runs, folder):
    """The sweep's runs from their records: one row per run (and per EMA), then mean ± std
    over seeds of every recipe."""
    table = run_table([folder])
    names = {run.name for run in runs}
    if not table.empty:
        table = table[table["run"].str.removesuffix(" (EMA)").isin(names)]
    if table.empty:
        return "no run of this sweep has records yet"
    columns = [c for c in ("run", "variant", "seed", "epochs", "val_acc", "test_acc",
                           "minutes", "peak_gb") if table[c].notna().any()]
    text = table[columns].to_string(index=False)
    keys = ["model", "variant", "epochs"]
    per_recipe = seed_table(table, keys, column="val_acc").merge(
        seed_table(table, keys).drop(columns="seeds"), how="left", on=keys)
    if per_recipe["test_acc"].isna().all():
        per_recipe = per_recipe.drop(columns="test_acc")
    per_recipe = per_recipe.sort_values("variant", key=lambda v: v.map(variant_rank),
                                        kind="stable")
    return f"{text}\n\n{per_recipe.to_string(index=False)}"


def main():
    parser = cli.parser(__doc__)
    a = parser.add_argument
    a("grids", nargs="+", metavar="GRID", help="grid files (TOML); several run as one pool, "
      "in their order, each into its own folder, a run starting once the runs it needs in "
      "any of them have finished")
    a("--folder", help="where the runs go (default: the grid's `folder`, else "
      "runs/sweeps/<grid name>); one grid only")
    a("--seeds", type=int, nargs="+", help="seeds of every stage without seeds of its own "
      "(default: the grid's, else 0)")
    a("--flags", default="", help="extra flags for every run, for a trial in a --folder of "
      "its own, e.g. --flags='--train-subset 5000 --epochs 3' (they take part in the "
      "finished-run check; flags that would train a finished run again are refused)")
    a("--only", nargs="+", metavar="PATTERN", help="only the runs whose names match one of "
      "these shell patterns, e.g. 'fitnet_w100_*' (a second seed of close settings), in "
      "every grid")
    a("--list", action="store_true", help="print the runs and their commands, run nothing")
    a("--checkpoints", action="store_true", help="print each run's checkpoint, one per line, "
      "run nothing (for evaluate.py: python sweep.py GRID --checkpoints --finished | xargs "
      "-r -d '\\n' python evaluate.py, safe for spaces and for none finished)")
    a("--finished", action="store_true", help="with --checkpoints: only the finished runs' "
      "(their records reach their last epoch, and their test unless this sweep skips it, "
      "whatever other flags they ran with), each other run named on stderr")
    a("--executor", choices=("local", "slurm"), default="local",
      help="local: on this machine, --runs-per-device runs per visible GPU or in all on a "
           "CPU; "
           "slurm: job arrays through sbatch (default: local)")
    a("--runs-per-device", type=int, default=1, metavar="N",
      help="local: runs at a time on each GPU, or in all on a CPU (default: 1), each with "
           "its share of the CPU threads; small models leave a GPU idle between kernel "
           "launches, so several runs share it well")
    a("--stop-after", type=float, metavar="MINUTES",
      help="local: stop the running jobs after this many minutes (each keeps its last "
           "complete epoch) and start no more; run the sweep again to go on (a GPU lent for "
           "a fixed time)")
    a("--time-min", type=int, default=24 * 60, help="a job's time limit in minutes "
      "(default: 1440)")
    s = parser.add_argument_group("slurm")
    slurm_options = [  # which a local sweep would ignore: refused there
        s.add_argument("--partition", help="SLURM partition"),
        s.add_argument("--job-name", default="kd-sweep", help="the jobs' name (default: "
                       "kd-sweep)"),
        s.add_argument("--gpus-per-node", type=int, default=1, help="GPUs per job (default: 1)"),
        s.add_argument("--cpus-per-task", type=int, default=8, help="CPUs per job (default: 8)"),
        s.add_argument("--mem-gb", type=int, default=32, help="memory per job (default: 32)"),
        s.add_argument("--array-parallelism", type=int, default=64,
                       help="most jobs of one array running at once (default: 64)"),
        s.add_argument("--sbatch", nargs="+", default=[], metavar="KEY=VALUE", type=key_value,
                       help="more sbatch parameters, e.g. account=myproject qos=high"),
        s.add_argument("--no-wait", action="store_true", help="exit once the jobs are "
                       "submitted (a rerun skips the finished runs, and refuses while any it "
                       "would run is still queued)")]
    args = parser.parse_args()
    # from the start: the checks before the first job (the data decoded on a fresh machine)
    # spend the lent machine's time too
    stop_at = time.time() + 60 * args.stop_after if args.stop_after else None
    local_only = [flag for flag, given in (("--stop-after", args.stop_after is not None),
                                           ("--runs-per-device", args.runs_per_device != 1))
                  if given]
    if args.executor == "slurm" and local_only:
        refuse(f"{local_only[0]} is for --executor local (SLURM jobs end at --time-min, "
               f"one run each)")
    slurm_only = [option.option_strings[0] for option in slurm_options
                  if getattr(args, option.dest) != option.default]
    if args.executor == "local" and slurm_only:
        refuse(f"{slurm_only[0]} is for --executor slurm: a local sweep runs its jobs itself")
    if args.runs_per_device < 1:
        refuse(f"--runs-per-device must be at least 1, got {args.runs_per_device}")
    if args.stop_after is not None and not 0 < args.stop_after < math.inf:
        refuse(f"--stop-after must be a positive number of minutes, got {args.stop_after:g}")
    for option, least in (("time_min", 1), ("array_parallelism", 1), ("cpus_per_task", 1),
                          ("mem_gb", 1), ("gpus_per_node", 0)):
        if getattr(args, option) < least:
            refuse(f"--{option.replace('_', '-')} must be at least {least}, got "
                   f"{getattr(args, option)}")
    if args.finished and not args.checkpoints:
        refuse("--finished qualifies --checkpoints")
    if args.folder and len(args.grids) > 1:
        refuse("--folder takes one grid; several grids go each into its own folder")
    try:
        extra = parse_flags(args.flags)
        grids, pool = load_pool(args, extra)
        runs = select(pool, args.only)
        # the same runs without --flags: what the flags change of each
        plain = {run.key: run for run in load_pool(args, None)[1]} if extra else {}
    except GridError as e:
        refuse(str(e))
    if Path.cwd().resolve() != ROOT and not all(Path(run.folder).is_absolute() for run in runs):
        refuse(f"the runs' folders are relative to the repository, where their jobs run: run "
               f"sweep.py from {ROOT}, or give the grid an absolute folder")
    if args.list:
        for run in runs:
            print(run.label, shlex.join(run.command()[1:]))
        return
    if args.checkpoints:
        for run in runs:
            if not args.finished or ran_to_end(run) is not None:
                print(run.out)
            else:
                print(f"not finished: {run.out}", file=sys.stderr)
        return
    left_out_needs(runs, pool)
    todo, outdated = [], {}
    for run in runs:
        reasons = stale(run) if finished(run) else None
        if reasons is None or reasons:
            todo.append(run)
        if reasons:
            outdated[run.label] = reasons
    if extra:
        retrained_by_flags(runs, plain)
    todo, recheck = with_dependents(runs, todo)
    busy = in_flight(todo)
    if busy:
        (label, where), *more = busy.items()
        refuse(f"{label} {where}: run the sweep again once it has ended"
               + (" (or scancel it)" if "SLURM" in where else "")
               + ", or leave it out with --only"
               + (f" (and {len(more)} more run{'s' * (len(more) != 1)}: "
                  f"{', '.join(label for label, _ in more)})" if more else ""))
    # Asked before any job starts: a typo in a later stage would otherwise show once the
    # stages before it have trained (a teacher: 16 minutes on a CPU).
    refused = [(run.label, reason) for run in todo if (reason := refusal(run))]
    if refused:
        more = len(refused) - 1
        refuse(f"{refused[0][0]}: {refused[0][1]}"
               + (f" (and {more} more run{'s' * (more != 1)} refused: --list shows their "
                  "commands)" if more else ""))
    folders = list(dict.fromkeys(run.folder for run in runs))
    for folder in folders:
        count = sum(run.folder == folder for run in runs)
        left = sum(run.folder == folder for run in todo)
        print(f"{count} run{'s' * (count != 1)} in {folder}: {count - left} finished (skipped), "
              f"{left} to run")
    for label, reasons in outdated.items():
        print(f"   stale  {label}  ({'; '.join(reasons)}): run again")
    for label, needs in recheck.items():
        print(f" recheck  {label}  (needs {', '.join(needs)}, which runs first: it starts over "
              "if what it read changed)")
    for run in todo:
        twin = None if run.label in outdated else repeats(run)
        if twin:
            print(f" repeats  {run.label}  (the same recipe, seed, teacher and data as {twin}, "
                  "finished: the same run under another name)")
    for path, folder in grids.items():
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            refuse(f"cannot make the folder {folder}: {e.strerror}")
        save_grid(path, folder)
    try:
        executors = {folder: make_executor(args, Path(folder) / "logs") for folder in folders}
    except RuntimeError as e:  # submitit's: no srun on this machine
        refuse(f"--executor slurm: {e}")
    if args.executor == "slurm":
        jobs = submit_to_slurm(todo, executors)
        if args.no_wait:
            return
        outcome = wait_for(jobs)
    else:
        try:
            outcome = run_here(todo, executors, visible_gpus(), args.runs_per_device, stop_at)
        except KeyboardInterrupt:  # the running jobs got the Ctrl-C too: they save and stop
            sys.exit("\ninterrupted: every finished run and each stopped run's last complete "
                     "epoch are on disk; run the sweep again to go on")
    for folder in folders:
        heading = f"{folder}:\n" if len(folders) > 1 else ""
        print(f"\n{heading}" + summary([run for run in runs if run.folder == folder], folder))
    for folder in folders:
        print(f"\ncheckpoints and records: {folder}/   job logs: {folder}/logs/")
    failed = {name: detail for name, (status, detail) in outcome.items() if status != "done"}
    stopped = any(status == "stopped" for status, _ in outcome.values())
    if failed:
        sys.exit(("not finished (stopped at --stop-after: run the sweep again to go on):\n"
                  if stopped else "failed or not run:\n") + "\n".join(f"  {name}: {detail}"
                                                    for name, detail in failed.items()))


def interrupt(signum, frame):
    """SIGTERM (`kill`, a shell or scheduler ending the sweep) and SIGINT as Ctrl-C: the
    running jobs save their last complete epoch and stop. Python's default would end the
    sweep alone on SIGTERM and leave its training processes running, and kd.startup's
    handler (for the imports) would end it on SIGINT without stopping them."""
    raise KeyboardInterrupt


def key_value(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def save_grid(path, folder):
    """The grid as given, with the code's commit and the command, so the study can be rerun
    exactly."""
    commit, dirty = git_commit()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    header = (f"# sweep of {stamp}, code {commit}{' (uncommitted changes)' if dirty else ''}\n"
              f"# command: {shlex.join(sys.argv)}\n")
    (Path(folder) / "sweeps").mkdir(exist_ok=True)
    # the pid too: two sweeps started in one second (side by side) keep both copies
    (Path(folder) / "sweeps" / f"{stamp}_{os.getpid()}_{Path(path).name}").write_text(
        header + Path(path).read_text())


def visible_gpus():
    """The GPUs local jobs may use: CUDA_VISIBLE_DEVICES's if it lists them by number."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    if all(gpu.strip().isdigit() for gpu in listed):
        return [int(gpu) for gpu in listed]
    import torch  # only to count the GPUs: the jobs themselves run in their own processes
    return list(range(torch.cuda.device_count()))


if __name__ == "__main__":
    kd.startup.exit_if_interrupted()
    for _signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signal, interrupt)
    try:
        main()
        if sys.stdout is not None:
            sys.stdout.flush()
    except KeyboardInterrupt:  # before any job ran, or while SLURM's jobs go on without it
        sys.exit("\ninterrupted")
    except BrokenPipeError:  # `--list | head`: its reader has what it wanted
        if not cli.reader_gone():
            raise
        sys.exit(1)
