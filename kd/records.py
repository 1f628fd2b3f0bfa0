"""The run records written beside each checkpoint (config JSON, metrics CSV, test JSON), each
replaced atomically."""
import json
import os
import subprocess
from pathlib import Path

import pandas as pd


def record_paths(out):
    """Run records are named after the checkpoint (less its .pt), so runs sharing a folder
    never collide; the lock file exists while a process trains the run (kd.runs.run_lock)."""
    # only .pt: any last suffix made --out teacher_lr0.05 and teacher_lr0.1 share records
    stem = Path(out).with_suffix("") if Path(out).suffix == ".pt" else Path(out)
    return {"config": Path(f"{stem}.config.json"), "metrics": Path(f"{stem}.metrics.csv"),
            "test": Path(f"{stem}.test.json"), "lock": Path(f"{stem}.lock")}


def git_commit():
    """(commit, dirty): the code's git commit and whether tracked files differ from it;
    (None, None) outside a git checkout."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD") or None
        return commit, (bool(git("status", "--porcelain", "--untracked-files=no"))
                        if commit else None)
    except (OSError, subprocess.SubprocessError):
        return None, None


def prediction_column(checkpoint, weights):
    """The column of a model (checkpoint, raw or ema weights) in evaluate.py's
    predictions.csv, which report.py reads back."""
    return f"{checkpoint} ({weights})"


def write_records(paths, config, history):
    """Config JSON and metrics CSV, rewritten whole from the checkpoint's history each epoch,
    so they always agree with the checkpoint beside them."""
    write_json(paths["config"], config)
    write_text(paths["metrics"], pd.DataFrame(history).to_csv(index=False))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_text(path, text):
    replace_atomically(path, lambda tmp: Path(tmp).write_text(text))


def flush_to_disk(path):
    """os.fsync of a file or (POSIX) folder by its name (a file opened for writing, which
    Windows' fsync needs)."""
    fd = os.open(path, os.O_RDONLY if os.path.isdir(path) else os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path, write):
    """Call `write(tmp)` on a temporary file of this call's own beside `path`, then rename it
    over `path` in one step: a crash (of the process or the machine) or a Ctrl-C mid-write
    leaves the previous file intact, and processes writing the same file at once (parallel
    runs sharing a teacher's stored logits, the decoded-image cache or a comparison figure)
    each replace it whole, where one shared temporary name let one rename the other's
    half-written file. A failed or interrupted write leaves no temporary file behind."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    # Named here and created by `write` itself, not by tempfile.mkstemp: its file exists
    # before its name reaches this frame (a Ctrl-C in between left it behind), and its mode
    # 0600 needed a chmod by the umask, which can only be read by setting it (a Ctrl-C
    # between the two calls left the process's umask at the stand-in's). The process id and
    # 64 random bits keep concurrent writers' names apart.
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}."
                               f"{os.urandom(8).hex()}.tmp")
    try:
        write(tmp)
        # On disk before the rename, and the rename on disk after it: without them a crash of
        # the machine (not of the process) may leave the new name on an empty file.
        flush_to_disk(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        # A plain try, not contextlib.suppress, whose Python-level __enter__ is a point where
        # CPython runs signal handlers: a second Ctrl-C (a sweep's stop reaches a run up to
        # three times) is then handled only once the stand-in is removed.
        try:
            os.remove(tmp)
        except OSError:
            pass
        # name the file, not its stand-in (or nothing: a full disk fails a write or flush)
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
            raise OSError(e.errno, e.strerror, path) from None
        raise
    try:  # the rename itself; a folder cannot be opened for this on Windows
        if os.name == "posix":
            flush_to_disk(folder)
    except OSError:  # best effort: some file systems refuse a folder's fsync
        pass


def test_record_matches(path, run_id, epoch):
    """Whether the test record at `path` measured this run at this epoch."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return record.get("run_id") == run_id and record.get("epoch") == epoch
