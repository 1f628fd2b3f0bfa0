"""The host's memory allocator, set up once at start-up so that training steps stop handing
their buffers back to the OS.

glibc's malloc serves large blocks with mmap and unmaps them when they are freed (above its
mmap threshold: 128 KiB, adapting upwards to at most 32 MiB), and trims the top of its heap
when more than 128 KiB is free there. A training step frees and reallocates the same
activation buffers every step (the student's first activation is 32 MiB at batch 256, past
even the highest threshold), so each step maps them in again and takes a page fault per
4 KiB page: the kernel's share of a CPU run's time. No mmap at all and a 1 GiB trim
threshold keep every freed buffer in the heap for the next step. This is done through
mallopt (ctypes) rather than GLIBC_TUNABLES, which only a fresh process reads, so that every
entry point gets it with nothing set by hand.
"""
import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameter numbers (malloc.h)
TRIM_THRESHOLD = 1024 ** 3  # keep up to 1 GiB of freed memory at the heap's top for reuse
OFF_SWITCH = "KD_KEEP_FREED_MEMORY"  # =0: leave malloc as glibc sets it (for the benchmark)


def keep_freed_memory():
    """No mmap for large blocks and a 1 GiB trim threshold in glibc's malloc; True if done,
    False where there is no glibc (macOS, musl) or OFF_SWITCH is 0. Harmless to call twice.
    Tensors and arithmetic are untouched: training is bit for bit the same."""
    if os.environ.get(OFF_SWITCH, "1") == "0" or not _is_glibc():
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _is_glibc():
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False
