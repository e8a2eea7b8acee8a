"""A DTLS connection freed by the cyclic garbage collector does not crash the process.

It runs in a child interpreter: on a build without
tools/dtlssocket/0005-connection-dealloc-after-gc-clear.patch the child dies by
SIGSEGV inside ``gc.collect()`` (a Connection's ``__dealloc__`` read the tinydtls
context through the None the collector had put in its place), and that must
fail this test rather than take pytest down with it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

#: Connections garbage beside a reference cycle (as a traceback's frame holds one)
#: and collected in one go; the collector clears them before it breaks the cycle.
CONNECTION_BESIDE_A_CYCLE = """
    context = dtls.DTLS(read=lambda addr, data: len(data), write=lambda addr, data: len(data))
    for _ in range(50):
        connection = dtls.Connection(context, dtls.Session("::1", 5684))
        cycle = [connection]
        cycle.append(cycle)
        del connection, cycle
"""


def run_child(scenario: str) -> subprocess.CompletedProcess[str]:
    code = "import gc\nfrom coapdev.dtls_build import patched_dtls\ndtls = patched_dtls()\n"
    code += textwrap.dedent(scenario) + "gc.collect()\nprint('collected')\n"
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_connection_collected_beside_a_cycle_does_not_crash_the_process() -> None:
    result = run_child(CONNECTION_BESIDE_A_CYCLE)
    assert result.returncode == 0, f"child exited {result.returncode}:\n{result.stderr[-2000:]}"
    assert result.stdout == "collected\n"
    assert result.stderr == ""
