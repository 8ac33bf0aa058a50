"""The control socket under abuse: the daemon and other clients are unaffected, no fd leaks."""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import time

import pytest


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fd_count(pid: int, timeout: float = 10.0) -> int:
    """The daemon's open files once the count has stayed the same for 0.3 s (a connection just
    closed by its client is closed by the daemon a moment later)."""
    deadline = time.monotonic() + timeout
    counts = [_fd_count(pid)]
    while time.monotonic() < deadline:
        time.sleep(0.05)
        counts.append(_fd_count(pid))
        if len(counts) >= 7 and len(set(counts[-7:])) == 1:
            return counts[-1]
    raise AssertionError(f"the daemon's open files did not settle: {counts[-10:]}")


def connect(site) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(site.socket))
    return s


def ask(s: socket.socket, obj) -> dict:
    s.sendall((obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n")
    return json.loads(s.makefile("rb").readline())


def started(site):
    site.write('[tasks.t]\ntype = "command"\nperiod = "1h"\nargv = ["true"]\n', scheduler='idle_timeout = "1s"\n')
    site.console("scheduler:start", check=True)
    return site.pid()


def test_malformed_oversized_half_sent_and_slow(site):
    pid = started(site)
    with connect(site) as s:
        ask(s, {"cmd": "ping"})  # warm up: the first connection allocates loop resources
    before = settled_fd_count(pid)
    with connect(site) as s:
        r = ask(s, b"{not json")
        assert r["ok"] is False and r["error"]["name"] == "BAD_REQUEST"
        r = ask(s, b"[1, 2]")
        assert r["error"]["code"] == 1
        r = ask(s, {"cmd": "no.such"})
        assert r["error"]["name"] == "UNKNOWN_COMMAND"
        r = ask(s, {"cmd": "task.state", "args": {"name": "nope"}})
        assert r["error"]["name"] == "NO_SUCH_TASK"
        assert ask(s, {"cmd": "ping"})["result"]["pong"] is True  # same connection still usable
    with connect(site) as s:  # oversized: error then closed
        s.sendall(b'{"cmd": "ping", "pad": "' + b"x" * (70 * 1024))
        reply = json.loads(s.makefile("rb").readline())
        assert reply["error"]["name"] == "TOO_LARGE"
        try:
            assert s.recv(10) == b""  # closed
        except ConnectionResetError:
            pass  # closed with our unread bytes still queued: the kernel resets
    with connect(site) as s:  # half-sent, then silent: timed out and closed
        s.sendall(b'{"cmd": "pi')
        reply = json.loads(s.makefile("rb").readline())
        assert reply["error"]["name"] == "TIMEOUT"
    slow = [connect(site) for _ in range(5)]  # slow clients that say nothing
    with connect(site) as s:  # meanwhile another client is served at once
        t0 = time.monotonic()
        assert ask(s, {"cmd": "ping"})["ok"]
        assert time.monotonic() - t0 < 0.5
    for s in slow:
        s.close()
    assert site.console("scheduler:state").returncode == 10
    site.wait_for(lambda: _fd_count(pid) == before, 10, f"the daemon's open files back to {before}")


def test_connection_limit(site):
    site.write('[tasks.t]\ntype = "command"\nperiod = "1h"\nargv = ["true"]\n',
               scheduler='idle_timeout = "5s"\nmax_connections = 3\n')
    site.console("scheduler:start", check=True)
    held = [connect(site) for _ in range(3)]
    time.sleep(0.2)
    with connect(site) as s:
        assert json.loads(s.makefile("rb").readline())["error"]["name"] == "BUSY"
    for s in held:
        s.close()

    def served() -> bool:  # the daemon frees the slots as it reads the closes: until then, BUSY
        with connect(site) as s:
            return ask(s, {"cmd": "ping"})["ok"]

    site.wait_for(served, 10, "a ping served once the held connections closed")


SYSTEM_PY = "/usr/bin/python3"
CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"cmd": "ping"}\\n')
except BrokenPipeError:
    pass  # refused before we spoke: the reply is already queued
print(s.makefile().readline())
"""


@pytest.fixture
def open_dir():
    """A world-traversable folder for the socket, so that `nobody` can reach it."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="sd-sock-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_nobody(sock) -> dict:
    if os.getuid() != 0 or not os.access(SYSTEM_PY, os.X_OK):
        pytest.skip("needs root and /usr/bin/python3 to run a client as nobody")
    nobody = pwd.getpwnam("nobody").pw_uid
    r = subprocess.run([SYSTEM_PY, "-c", CLIENT, str(sock)], capture_output=True, text=True, user=nobody,
                       timeout=20, cwd="/")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_client_of_another_uid_is_refused(site, open_dir):
    site.socket = f"{open_dir}/s.sock"
    started(site)
    sock = site.socket
    os.chmod(sock, 0o666)  # even with the file mode open, SO_PEERCRED refuses
    reply = as_nobody(sock)
    assert reply["error"]["name"] == "FORBIDDEN"
    assert "refused control connection from uid" in site.log()
    assert site.console("scheduler:state").returncode == 10


def test_allowed_uid_may_talk(site, open_dir):
    nobody = pwd.getpwnam("nobody").pw_uid
    site.socket = f"{open_dir}/s.sock"
    site.write('[tasks.t]\ntype = "command"\nperiod = "1h"\nargv = ["true"]\n',
               scheduler=f'allowed_uids = [{nobody}]\nsocket_mode = "0666"\n')
    site.console("scheduler:start", check=True)
    assert os.stat(site.socket).st_mode & 0o777 == 0o666
    assert as_nobody(site.socket)["ok"] is True
