"""Nothing generated reaches git: the virtual environment, runs and data are ignored however
they are made, a directory or a symlink to one (a worktree's `.venv -> ../main/.venv`).
`.venv/` matched directories only: `git add -A` in a worktree committed its symlink, and
checking that commit out in the main tree replaced the real environment with it."""
import shutil
import subprocess

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@pytest.mark.parametrize("name", [".venv", "runs", "data", "checkpoints/teacher.pt",
                                  "plots/curves.png"])
def test_generated_paths_are_ignored_as_symlinks_too(tmp_path, name):
    subprocess.run(["git", "init", "-q", tmp_path], check=True)
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(tmp_path / "elsewhere")
    ignored = subprocess.run(["git", "check-ignore", "-q", name], cwd=tmp_path)
    assert ignored.returncode == 0, f"{name} (a symlink) is not ignored"
