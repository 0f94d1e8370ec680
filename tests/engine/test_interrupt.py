"""StopRequest in a process started with SIGINT ignored, as submitit's controller starts a sweep's
job: the first Ctrl-C asks for a checkpoint and a stop, a second one stops at once, and leaving
the block puts back the disposition the process had."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, signal
    from cellmap_train.host.stop_request import StopRequest

    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # inherited: Python installs no handler then
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        print("first:", stop.signal_name, flush=True)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            print("second: ignored", flush=True)
        except KeyboardInterrupt:
            print("second: stops at once", flush=True)
    print("after:", signal.getsignal(signal.SIGINT) == signal.SIG_IGN, flush=True)
""")


def test_a_second_ctrl_c_stops_a_process_started_with_it_ignored():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["first: SIGINT", "second: stops at once", "after: True"]
