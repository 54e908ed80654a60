"""`relayrl train` stops cleanly whatever stops it: SIGTERM is handled like Ctrl+C (a checkpoint, the
workers stopped, exit code 130), and a trainer killed outright (SIGKILL) leaves no worker behind."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")


def children(pid: int) -> set[int]:
    """Pids of the live processes whose parent is ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def stack_dump(pid: int) -> str:
    """The Python stacks of ``pid`` if py-spy is installed (a diagnostic for a hang), else ''."""
    import shutil

    spy = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    if spy is None:
        return ""
    try:
        return subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"no {what} after {timeout} s")


@pytest.fixture
def train(tmp_path):
    """Starts ``relayrl train`` on a long budget; the process is stopped by its pid at teardown."""
    procs = []

    def _start():
        err = open(tmp_path / "train.err", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "relayrl.cli", "train", "--run-dir", str(tmp_path / "run"),
             "--epochs", "100", "--rounds", "2", "--steps", "50", "--no-progress", "--quiet"],
            stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, cwd=tmp_path,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            # SIGINT at its default, whatever the test runner's shell did with it
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        procs.append((proc, err))
        return proc

    _start.workers = set()  # filled by _workers(); killed at teardown if a test failed before they exited
    yield _start
    for proc, err in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        err.close()
    for pid in _start.workers:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def _workers(train, proc) -> set[int]:
    """The two worker processes, once the first statistics row shows they are running."""
    run = Path(proc.args[proc.args.index("--run-dir") + 1])
    wait_until(lambda: (run / "stats.csv").exists() and len((run / "stats.csv").read_text().splitlines()) >= 2,
               120, "statistics row")
    # the spawn context also starts a resource tracker: keep the processes running the worker
    pids = {p for p in children(proc.pid)
            if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()}
    train.workers.update(pids)
    assert len(pids) == 2, pids
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_save_a_checkpoint_and_stop_the_workers(train, tmp_path, sig):
    proc = train()
    workers = _workers(train, proc)
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running 60 s after {sig!r}:\n{stack_dump(proc.pid)}\n"
                             f"{(tmp_path / 'train.err').read_text()[-3000:]}") from None
    assert code == 130
    err = (tmp_path / "train.err").read_text()
    assert "interrupted: saved" in err, err[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "latest").exists()
    wait_until(lambda: not any(alive(p) for p in workers), 15, "exit of the workers")


def test_workers_exit_when_the_trainer_is_killed(train):
    proc = train()
    workers = _workers(train, proc)
    proc.kill()  # SIGKILL: no handler runs, no stop event is set
    proc.wait(timeout=10)
    wait_until(lambda: not any(alive(p) for p in workers), 20, "exit of the orphaned workers")


# --- the one rule every command follows (relayrl.roles.common.stop_signals), in this process -------------
def test_sigterm_raises_keyboard_interrupt_inside_stop_signals_and_the_old_handler_comes_back():
    from relayrl.roles.common import stop_signals

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with stop_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            wait_until(lambda: False, 30, "KeyboardInterrupt from SIGTERM")  # interrupted long before
    assert signal.getsignal(signal.SIGTERM) is before


def test_graceful_stop_signals_ask_first_and_interrupt_on_the_second():
    from relayrl.roles.common import stop_signals

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with stop_signals(graceful=True) as stop:
            assert not stop()
            os.kill(os.getpid(), signal.SIGTERM)  # the first: a request the worker checks each step
            wait_until(stop, 30, "the stop request")
            os.kill(os.getpid(), signal.SIGINT)  # the second (Ctrl+C): at once
            wait_until(lambda: False, 30, "KeyboardInterrupt from the second signal")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_stop_signals_off_the_main_thread_change_nothing():
    import threading

    from relayrl.roles.common import stop_signals

    seen = []

    def body():
        with stop_signals(graceful=True) as stop:
            seen.append((stop(), signal.getsignal(signal.SIGTERM)))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join(timeout=30)
    assert seen == [(False, before)]
