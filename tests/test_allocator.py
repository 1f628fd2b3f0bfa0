"""allocator.keep_freed_memory: freed buffers stay in the heap instead of being faulted in
again on every step (counted in page faults, not timed)."""
import os
import subprocess
import sys

import pytest

import allocator
from conftest import ROOT

# A fresh process frees and reallocates a 40 MiB tensor, as a training step does with its
# activations, and prints the minor page faults of the last 5 rounds (in the first few, the
# heap grows: the alignment torch asks for leaves each freed block a little too small).
CHURN = """
import resource, sys, torch
sys.path.insert(0, ".")
from allocator import keep_freed_memory
keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(15):
    if i == 10:
        start = faults()
    torch.ones(10 * 1024 * 1024)  # 40 MiB, written in full, freed at once
print(faults() - start)
"""


def churn_faults(keep):
    out = subprocess.run([sys.executable, "-c", CHURN], cwd=ROOT, capture_output=True,
                         text=True, check=True,
                         env={**os.environ, allocator.OFF_SWITCH: "1" if keep else "0"})
    return int(out.stdout)


@pytest.mark.skipif(not allocator._is_glibc(), reason="glibc's malloc only")
def test_freed_buffers_are_reused_not_faulted_in_again():
    pages = 5 * 10 * 1024 * 1024 * 4 // 4096  # 5 rounds of 40 MiB, 4 KiB pages
    assert churn_faults(keep=False) > 0.9 * pages  # glibc's default: mapped in every round
    assert churn_faults(keep=True) < 0.01 * pages


def test_the_off_switch_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv(allocator.OFF_SWITCH, "0")
    assert allocator.keep_freed_memory() is False
