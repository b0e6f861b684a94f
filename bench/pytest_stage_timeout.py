"""A per-test time limit for the test stages of bench/gpu_all.sh, without the pytest-timeout plugin.

    python -m pytest -p bench.pytest_stage_timeout --per-test-timeout 60 ...

Each test (setup, call and teardown together) gets SIGALRM after the limit: the exception it raises fails
that test with a message naming it, and the run goes on with the next one. A test stuck inside native code
(a hung CUDA call) does not return to Python to see the alarm; for that, faulthandler prints every thread's
stack and ends the process 30 s later, so the log shows where it hung and the stage's own limit is not all
spent on one test. Unix main thread only (where pytest runs tests); a limit of 0 turns it off.
"""

from __future__ import annotations

import faulthandler
import signal

import pytest

HARD_EXIT_GRACE_S = 30.0


class PerTestTimeout(Exception):
    """A test ran past --per-test-timeout."""


def pytest_addoption(parser):
    parser.addoption("--per-test-timeout", type=float, default=0.0,
                     help="seconds each test may take (setup + call + teardown); 0: no limit")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    limit = item.config.getoption("per_test_timeout")
    if not limit or limit <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise PerTestTimeout(f"{item.nodeid} ran past the per-test limit of {limit:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    faulthandler.dump_traceback_later(limit + HARD_EXIT_GRACE_S, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)
