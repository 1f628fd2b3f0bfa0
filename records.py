"""The run records written beside each checkpoint (config JSON, metrics CSV, test JSON), each
replaced atomically."""
import json
import os
import subprocess
from pathlib import Path

import pandas as pd


def record_paths(out):
    """Run records are named after the checkpoint, so runs sharing a folder never collide."""
    stem = Path(out).with_suffix("")
    return {"config": Path(f"{stem}.config.json"), "metrics": Path(f"{stem}.metrics.csv"),
            "test": Path(f"{stem}.test.json")}


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_records(paths, config, history):
    """Config JSON and metrics CSV, rewritten whole from the checkpoint's history each epoch,
    so they always agree with the checkpoint beside them."""
    write_json(paths["config"], config)
    write_text(paths["metrics"], pd.DataFrame(history).to_csv(index=False))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_text(path, text):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
