"""Config loading: typed, frozen, and every error names file and key path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from schedulerd.config import load
from schedulerd.settings import ConfigError, Secret, parse_duration, public_view


def write(tmp_path: Path, body: str, name: str = "schedulerd.toml") -> Path:
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    p = etc / name
    p.write_text(body)
    return p


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400),
                                          ("250ms", 0.25), ("7d", 604800), (12, 12), (0.5, 0.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", [-5, "5 minutes", "", "s", True, "1x", None])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_shipped_config_loads_with_paths_under_the_checkout():
    root = Path(__file__).resolve().parents[2]
    config = load(root / "etc" / "schedulerd.toml")
    assert config.base_dir == root
    assert config.scheduler.socket == root / "var/run/schedulerd.sock"
    assert config.scheduler.socket_mode == 0o600
    assert "heartbeat" in config.tasks
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.scheduler.max_crashes = 3  # type: ignore[misc]


def test_message_names_file_and_key_path(tmp_path):
    p = write(tmp_path, '[tasks.photos]\ntype = "command"\nargv = ["true"]\nperiod = -5\n')
    with pytest.raises(ConfigError) as e:
        load(p)
    assert str(e.value) == f'{p}: tasks.photos.period: expected a duration like "30s", got -5'


@pytest.mark.parametrize("body,path,words", [
    ('[scheduler]\nsocket_mdoe = "0600"\n', "scheduler.socket_mdoe", "unknown setting"),
    ('[scheduler]\nmax_crashes = "five"\n', "scheduler.max_crashes", "expected an integer"),
    ('[scheduler]\nsocket_mode = "rw"\n', "scheduler.socket_mode", "octal mode"),
    ('[tasks.x]\ntype = "nope"\n', "tasks.x.type", "unknown task type 'nope'"),
    ('[tasks.x]\nperiod = "1m"\n', "tasks.x.type", "missing required setting"),
    ('[tasks.x]\ntype = "command"\nargv = ["true"]\ncolour = 1\n', "tasks.x.colour", "unknown setting"),
    ('[tasks.x]\ntype = "command"\nargv = "true"\n', "tasks.x.argv", "expected a list"),
    ('[tasks.x]\ntype = "command"\nargv = []\n', "tasks.x", "argv: must name a program"),
    ('[tasks.x]\ntype = "command"\nargv = ["no-such-program-here"]\n', "tasks.x", "not found on PATH"),
    ('[jobs.types.zzz]\nmax_attempts = 2\n', "jobs.types.zzz", "unknown job type"),
    ('[bogus]\na = 1\n', "bogus", "unknown section"),
])
def test_rejected(tmp_path, body, path, words):
    p = write(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        load(p)
    assert e.value.path == path
    assert words in e.value.message
    assert str(e.value).startswith(f"{p}: {path}: ")


def test_invalid_toml_names_the_file(tmp_path):
    p = write(tmp_path, "[scheduler\n")
    with pytest.raises(ConfigError, match="invalid TOML") as e:
        load(p)
    assert str(e.value).startswith(str(p))


def test_dropins_merge_and_duplicates_name_both_files(tmp_path):
    main = write(tmp_path, '[tasks.a]\ntype = "command"\nargv = ["true"]\n')
    d = tmp_path / "etc" / "schedulerd.d"
    d.mkdir()
    (d / "10-b.toml").write_text('[tasks.b]\ntype = "command"\nargv = ["true"]\nperiod = "5s"\n')
    config = load(main)
    assert set(config.tasks) == {"a", "b"} and config.tasks["b"].period == 5
    (d / "20-a.toml").write_text('[tasks.a]\ntype = "command"\nargv = ["false"]\n')
    with pytest.raises(ConfigError) as e:
        load(main)
    assert str(e.value).startswith(f"{d / '20-a.toml'}: tasks.a: duplicate task name (also in {main})")


def test_error_in_dropin_names_the_dropin(tmp_path):
    main = write(tmp_path, "[scheduler]\n")
    d = tmp_path / "etc" / "schedulerd.d"
    d.mkdir()
    (d / "x.toml").write_text('[tasks.c]\ntype = "command"\nargv = ["true"]\ntimeout = "soon"\n')
    with pytest.raises(ConfigError) as e:
        load(main)
    assert str(e.value).startswith(f"{d / 'x.toml'}: tasks.c.timeout:")


def test_secrets_from_env_and_never_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("SD_TEST_PW", "hunter22")
    p = write(tmp_path, '[tasks.x]\ntype = "command"\nargv = ["true"]\nenv = { API_TOKEN = "tok-123456" }\n')
    config = load(p)
    assert "tok-123456" in config.secrets()
    assert public_view(config.tasks["x"].settings)["env"] == {"API_TOKEN": "********"}
    s = Secret("hunter22")
    assert "hunter22" not in repr(s) and "hunter22" not in str(s) and s.reveal() == "hunter22"


def test_config_check_cli_exit_codes(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    p = write(tmp_path, '[tasks.photos]\ntype = "command"\nargv = ["true"]\nperiod = -5\n')
    r = subprocess.run([str(root / "bin/console"), "--config", str(p), "config:check"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == f'console config:check: {p}: tasks.photos.period: expected a duration like "30s", got -5'
    assert "Traceback" not in r.stderr
    p.write_text('[tasks.photos]\ntype = "command"\nargv = ["true"]\nperiod = "5s"\n')
    r = subprocess.run([sys.executable, "-m", "schedulerd.cli", "--config", str(p), "config:check"],
                       capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stderr
