"""The subprocess helpers of the tests (tests/procs.py, tests/loopback.py): output kept and shown
on failure, the whole process group killed at the deadline or when a sibling fails, a worker
cluster retried with new ports when a port was taken. Small Python processes, about a second."""
import time

import _pytest.outcomes
import pytest

import procs
from loopback import run_cluster

# prints, starts a grandchild that sleeps in the same process group, writes its pid, then sleeps
SLEEPER = """import subprocess, sys, time
print("started", flush=True)
print("on stderr", file=sys.stderr, flush=True)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(600)
"""


def _gone(pid, seconds=120):
    """True once ``pid`` has exited (a zombie, not yet reaped, counts as gone); False if it still
    runs after ``seconds`` (a SIGKILLed process may need a moment to be scheduled and die)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] in "ZX":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def _wait_for(path, seconds=120):
    deadline = time.monotonic() + seconds
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} not written"
        time.sleep(0.05)
    return int(path.read_text())


def test_run_returns_both_streams_and_any_exit_code(tmp_path):
    r = procs.run(procs.python("-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"),
                  log_dir=tmp_path, name="three")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert (tmp_path / "three.out").read_text() == "out\n" and (tmp_path / "three.err").read_text() == "err\n"


def test_run_past_the_deadline_kills_the_group_and_shows_the_output(tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    # the one timing assumption here: a bare Python prints two lines and starts a child in 10 s
    with pytest.raises(_pytest.outcomes.Failed) as exc:
        procs.run(procs.python(script, tmp_path / "grandchild.pid"), timeout=10, log_dir=tmp_path)
    msg = str(exc.value)
    assert "not finished within 10 s (killed)" in msg and "started" in msg and "on stderr" in msg
    assert _gone(_wait_for(tmp_path / "grandchild.pid"))  # the grandchild went with its group


def test_wait_all_stops_at_the_first_failure_and_kills_the_rest(tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    sleeper = procs.start(procs.python(script, tmp_path / "grandchild.pid"), tmp_path / "sleeper.log")
    grandchild = _wait_for(tmp_path / "grandchild.pid")
    failing = procs.start(procs.python("-c", "import sys; print('bad thing'); sys.exit(2)"), tmp_path / "failing.log")
    with pytest.raises(procs.Failed) as exc:
        procs.wait_all([sleeper, failing], timeout=300)
    msg = str(exc.value)  # the failure ended the wait (not the deadline), with both logs
    assert "failing failed (exit [2]); the others were killed" in msg and "bad thing" in msg and "started" in msg
    assert sleeper.returncode == -9 and _gone(grandchild)


def test_wait_all_returns_when_all_succeed(tmp_path):
    jobs = [procs.start(procs.python("-c", f"print({i})"), tmp_path / f"j{i}.log") for i in range(3)]
    procs.wait_all(jobs, timeout=300)
    assert [j.returncode for j in jobs] == [0, 0, 0] and [j.output() for j in jobs] == ["0\n", "1\n", "2\n"]


# a stand-in worker: the first start of worker 1 fails as if its port were taken
FAKE_WORKER = """import json, os, sys
cfg = json.loads(os.environ["TF_CONFIG"])
index, folder = cfg["task"]["index"], sys.argv[1]
flag = os.path.join(folder, "collided")
if index == 1 and not os.path.exists(flag):
    open(flag, "w").close()
    sys.exit("tensorflow.python.framework.errors_impl.UnknownError: Could not start gRPC server")
open(os.path.join(folder, f"ok{index}-" + cfg["cluster"]["worker"][index].split(":")[1]), "w").close()
"""


def test_cluster_is_retried_with_new_ports_when_a_port_was_taken(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(FAKE_WORKER)
    workers = run_cluster([script, tmp_path], tmp_path)
    assert [w.returncode for w in workers] == [0, 0]
    assert "Could not start gRPC server" in (tmp_path / "worker1.attempt1.log").read_text()
    # worker 0 ran in both attempts (a real one would have been killed), worker 1 in the second
    assert sorted(p.name.split("-")[0] for p in tmp_path.glob("ok*")) == ["ok0", "ok0", "ok1"]


def test_cluster_failure_shows_every_log(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("import sys; print('worker output'); sys.exit('real error')")
    with pytest.raises(procs.Failed) as exc:
        run_cluster([script], tmp_path)
    msg = str(exc.value)
    assert "real error" in msg and msg.count("worker output") == 2
    assert not list(tmp_path.glob("*.attempt*.log"))  # not a port collision: no retry
