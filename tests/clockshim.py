"""A wall clock that steps in the collector's processes only: an LD_PRELOAD shim, built here.

A fake, and named one: a real host's clock step (NTP, ``date -s``) would step the whole
machine's clock, the test runner's and every other helper's with it. The shim adds an
offset read from a file to CLOCK_REALTIME (``clock_gettime``, ``gettimeofday``, ``time``)
in the processes that load it, and leaves CLOCK_MONOTONIC alone, as a real step does.
The test writes the file to step the clock mid-run; every process sees the new offset
within ``RECHECK_NS`` (the file is read again at most that often, on the monotonic clock).
The test driver's cpu time is the wall clock (``g_get_real_time`` -> ``gettimeofday``),
so its counters step with it, as the oracle (tests/oracle.py) expects.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define RECHECK_NS 20000000LL

typedef int (*gettime_fn)(clockid_t, struct timespec *);
static gettime_fn real_gettime;
static long long offset_ns, checked_at = -RECHECK_NS;

static long long now_ns(gettime_fn fn, clockid_t id) {
    struct timespec ts;
    fn(id, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The offset in nanoseconds, from the file named by VPC_CLOCK_OFFSET_FILE. */
static long long offset(void) {
    if (!real_gettime)
        real_gettime = (gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
    long long mono = now_ns(real_gettime, CLOCK_MONOTONIC);
    if (mono - __atomic_load_n(&checked_at, __ATOMIC_RELAXED) >= RECHECK_NS) {
        const char *path = getenv("VPC_CLOCK_OFFSET_FILE");
        int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
        if (fd >= 0) {
            char buf[64];
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (n > 0) {
                buf[n] = 0;
                __atomic_store_n(&offset_ns, strtoll(buf, NULL, 10), __ATOMIC_RELAXED);
            }
        }
        __atomic_store_n(&checked_at, mono, __ATOMIC_RELAXED);
    }
    return __atomic_load_n(&offset_ns, __ATOMIC_RELAXED);
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    long long off = offset();
    int rc = real_gettime(id, ts);
    if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        long long ns = ts->tv_sec * 1000000000LL + ts->tv_nsec + off;
        ts->tv_sec = ns / 1000000000LL;
        ts->tv_nsec = ns % 1000000000LL;
    }
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    clock_gettime(CLOCK_REALTIME, &ts);
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
    return 0;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
"""


def build(where: Path) -> Path:
    """Compile the shim into ``where``; return the shared object's path."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc is needed to build the clock shim")
    src, lib = where / "clockshim.c", where / "clockshim.so"
    src.write_text(SOURCE)
    subprocess.run([gcc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(src), "-ldl"],
                   check=True, capture_output=True, text=True)
    return lib


def step(offset_file: Path, seconds: float) -> None:
    """Set the shim's wall-clock offset (from the true clock) to ``seconds``."""
    tmp = offset_file.with_suffix(".tmp")
    tmp.write_text(str(round(seconds * 1e9)))
    tmp.replace(offset_file)
