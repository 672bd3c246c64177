"""PreemptionHandler: the first signal is a request, a relayed repeat is the same request, a later one exits at once."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from sdt_gen.training import PreemptionHandler
    gap = float(sys.argv[1])
    with PreemptionHandler() as preemption:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(gap)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        print("still running, first signal:", preemption.received.name, flush=True)
    print("handlers restored:", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, flush=True)
""")


def run(gap: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(gap)], capture_output=True, text=True, timeout=60)


def test_a_repeat_within_the_relay_window_is_the_same_request():
    result = run(0.05)
    assert result.returncode == 0, result.stderr
    assert "still running, first signal: SIGTERM" in result.stdout and "handlers restored: True" in result.stdout


def test_a_second_signal_later_exits_at_once():
    result = run(1.5)
    assert result.returncode == 128 + 2  # SIGINT's number: exited from the handler, nothing after it ran
    assert "still running" not in result.stdout
