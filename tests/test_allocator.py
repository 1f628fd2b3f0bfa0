"""allocator.keep_freed_memory: freed buffers stay in the heap instead of being faulted in
again on every step (counted in page faults, not timed)."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from kd import allocator

# A fresh process frees and reallocates a 40 MiB tensor, as a training step does with its
# activations, and prints the minor page faults of each round. In the first rounds the heap
# grows: the alignment torch asks for leaves each freed block a little too small until freed
# neighbours merge. How many rounds that takes depends on what else the process allocated
# (up to 9 rounds on one machine, more than 10 on another), so only the rounds after WARM_UP count.
ROUNDS, WARM_UP = 50, 30
CHURN = f"""
import resource, sys, torch
sys.path.insert(0, ".")
from kd.allocator import keep_freed_memory
keep_freed_memory()
for _ in range({ROUNDS}):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(10 * 1024 * 1024)  # 40 MiB, written in full, freed at once
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""
PAGES = 10 * 1024 * 1024 * 4 // 4096  # one round's 40 MiB in 4 KiB pages


def rounds_faulting_in(keep):
    """How many rounds after the warm-up took page faults for most of the buffer."""
    out = subprocess.run([sys.executable, "-c", CHURN], cwd=ROOT, capture_output=True,
                         text=True, check=True,
                         env={**os.environ, allocator.OFF_SWITCH: "1" if keep else "0"})
    faults = [int(line) for line in out.stdout.split()][WARM_UP:]
    return sum(f > 0.5 * PAGES for f in faults)


@pytest.mark.skipif(not allocator._is_glibc(), reason="glibc's malloc only")
def test_freed_buffers_are_reused_not_faulted_in_again():
    assert rounds_faulting_in(keep=False) == ROUNDS - WARM_UP  # glibc's default: every round
    assert rounds_faulting_in(keep=True) == 0


def test_the_off_switch_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv(allocator.OFF_SWITCH, "0")
    assert allocator.keep_freed_memory() is False
