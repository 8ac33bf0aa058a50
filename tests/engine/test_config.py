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
    ('[tasks.x]\ntype = "command"\nargv = []\n', "tasks.x.argv", "must name a program"),
    ('[tasks.x]\ntype = "command"\nargv = ["no-such-program-here"]\n', "tasks.x.argv", "not found on PATH"),
    ('[tasks.s]\ntype = "subdefs"\ndatabox = "nope"\n', "tasks.s.databox", "unknown databox 'nope'"),
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


# --- socket_mode: octal only (issue 25 item 9) ------------------------------------------------


@pytest.mark.parametrize("spelling,mode", [('"0600"', 0o600), ('"0660"', 0o660), ("0o600", 0o600), ("0o644", 0o644),
                                          ("0o0660", 0o660)])
def test_socket_mode_as_octal_string_or_octal_integer(tmp_path, spelling, mode):
    p = write(tmp_path, f"[scheduler]\nsocket_mode = {spelling}\n")
    assert load(p).scheduler.socket_mode == mode


@pytest.mark.parametrize("body,right", [
    ("[scheduler]\nsocket_mode = 600\n", 'write socket_mode = "0600" or socket_mode = 0o600'),
    ("[scheduler]\nsocket_mode = 644  # rw-r--r--\n", '"0644" or socket_mode = 0o644'),
    ("[scheduler]\nsocket_mode = 384\n", '"0600" or socket_mode = 0o600'),  # decimal for 0o600: still refused
    ("scheduler = { socket_mode = 660 }\n", '"0660"'),
    ("scheduler.socket_mode = 1_0_0_0\n", "0o1750"),
])
def test_socket_mode_as_bare_decimal_is_refused_with_the_right_spelling(tmp_path, body, right):
    p = write(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        load(p)
    assert e.value.path == "scheduler.socket_mode"
    assert "is a decimal number" in e.value.message and right in e.value.message
    assert str(e.value).startswith(f"{p}: scheduler.socket_mode: ")


def test_socket_mode_as_decimal_is_refused_by_the_cli_too(site):
    site.write("", scheduler="socket_mode = 600\n")
    r = site.console("scheduler:start")
    assert r.returncode == 2 and "socket_mode = 0o600" in r.stderr, r.stderr
    assert not site.socket.exists()


# --- unknown keys: every known key listed, the closest suggested (item 10) --------------------


def test_misspelt_engine_key_lists_the_engine_keys_and_suggests_the_closest(tmp_path):
    p = write(tmp_path, '[tasks.x]\ntype = "command"\nargv = ["true"]\nperid = "5m"\n')
    with pytest.raises(ConfigError) as e:
        load(p)
    assert e.value.path == "tasks.x.perid"
    known = e.value.message.split("(known: ")[1].split(")")[0].split(", ")
    assert {"type", "period", "enabled", "timeout", "trigger", "argv", "env"} <= set(known)
    assert known == sorted(known)
    assert e.value.message.endswith("; did you mean period?")


@pytest.mark.parametrize("body,path,hint", [
    ('[scheduler]\nsocket_mdoe = "0600"\n', "scheduler.socket_mdoe", "did you mean socket_mode?"),
    ('[jobs]\nkeep_finshed = 3\n', "jobs.keep_finshed", "did you mean keep_finished?"),
    ('[queues.q]\nworkrs = 2\n', "queues.q.workrs", "did you mean workers?"),
    ('[tasks.x]\ntype = "command"\nargv = ["true"]\ntimout = "1m"\n', "tasks.x.timout", "did you mean timeout?"),
    ('[tasks.x]\ntype = "command"\nargv = ["true"]\nenabeld = false\n', "tasks.x.enabeld", "did you mean enabled?"),
    ('[schedular]\nlog_level = "info"\n', "schedular", "did you mean scheduler?"),
])
def test_every_unknown_key_suggests_the_closest(tmp_path, body, path, hint):
    p = write(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        load(p)
    assert e.value.path == path and e.value.message.endswith(hint), e.value.message


def test_unknown_key_with_nothing_close_lists_without_a_guess(tmp_path):
    p = write(tmp_path, '[tasks.x]\ntype = "command"\nargv = ["true"]\nzzzzzz = 1\n')
    with pytest.raises(ConfigError) as e:
        load(p)
    assert "did you mean" not in e.value.message and "trigger" in e.value.message


# --- trigger: only events some type emits (item 11) --------------------------------------------


def test_trigger_names_an_event_a_type_emits(tmp_path):
    p = write(tmp_path, '[tasks.x]\ntype = "command"\nargv = ["true"]\n'
                        'trigger = ["record.created", "ftp.pulled", "record.updated", "task.state"]\n')
    assert load(p).tasks["x"].trigger == ("record.created", "ftp.pulled", "record.updated", "task.state")


def test_trigger_with_a_misspelt_event_is_refused(tmp_path):
    p = write(tmp_path, '[tasks.x]\ntype = "command"\nargv = ["true"]\ntrigger = ["record.created", "fiel.created"]\n')
    with pytest.raises(ConfigError) as e:
        load(p)
    assert e.value.path == "tasks.x.trigger[1]"
    assert e.value.message.startswith("unknown event 'fiel.created' (known: ")
    assert "record.created" in e.value.message and "task.state" in e.value.message
    assert e.value.message.endswith("did you mean record.created?")


def test_task_types_declare_the_events_they_emit():
    from schedulerd.registry import known_events, task_type

    assert task_type("archive").emits == ("record.created",)
    assert set(task_type("record_mover").emits) == {"record.updated", "record.deleted"}
    assert {"record.created", "record.updated", "record.deleted", "ftp.pulled", "task.state"} <= set(known_events())


# --- config:check --json: TOML keys, not Python names (item 18) --------------------------------


def test_config_check_json_shows_toml_keys(site):
    site.write('[databoxes.main]\npath = "var/db/main.sqlite"\nstorage = "var/db/main"\n'
               '[tasks.m]\ntype = "record_mover"\nperiod = "1h"\n[[tasks.m.rules]]\nname = "r"\ndatabox = "main"\n'
               'from = { collection = ["incoming"] }\nto = { status = "1" }\n')
    r = site.console("config:check", "--json")
    assert r.returncode == 0, r.stderr
    assert "from_" not in r.stdout
    import json

    rule = json.loads(r.stdout)["tasks"]["m"]["settings"]["rules"][0]
    assert rule["from"]["collection"] == ["incoming"]


@pytest.mark.parametrize("seconds,text", [(604800, "7d"), (96 * 3600, "4d"), (5400, "1h30m"), (0.25, "250ms"),
                                          (30, "30s"), (90061.5, "1d1h1m1s500ms"), (0, "0s")])
def test_durations_format_as_written(seconds, text):
    from schedulerd.settings import format_duration

    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_worker_configuration_prints_retention_as_durations(site):
    site.write("[jobs]\nfinished_max_age = \"7d\"\nfailed_max_age = \"36h\"\n")
    r = site.console("worker:show-configuration")
    assert r.returncode == 0, r.stderr
    assert "retention: finished keep 1000 / 7d, failed keep 1000 / 1d12h" in r.stdout
    assert "0:00:00" not in r.stdout


# --- a broken file while the daemon runs (item 29) ----------------------------------------------


def _break(site, where: str) -> None:
    """A syntax error in a task table, or one that leaves no readable [scheduler] section at all."""
    text = site.config.read_text()
    site.config.write_text(text + "\n[tasks.t2\n" if where == "tasks" else "[scheduler\n" + text)


@pytest.mark.parametrize("where", ["tasks", "scheduler"])
def test_daemon_commands_work_while_the_file_is_broken(site, where):
    site.write('[tasks.t]\ntype = "command"\nperiod = "1h"\nargv = ["true"]\n')
    site.console("scheduler:start", check=True)
    pid = site.pid()
    record = site.pidfile.with_name("schedulerd.pid.json")
    assert record.is_file() and str(site.socket) in record.read_text()
    _break(site, where)
    assert site.console("config:check").returncode == 2
    r = site.console("scheduler:state")
    assert r.returncode == 10, r.stderr
    assert "warning: the config does not load" in r.stderr and "invalid TOML" in r.stderr
    assert f"socket {site.socket}" in r.stderr
    assert site.console("task:stop", "t").returncode == 0
    assert site.task("t")["state"] == "stopped"
    r = site.console("task:start", "t")
    assert r.returncode == 0 and r.stdout.strip() in ("t: starting", "t: running", "t: waiting"), r.stdout + r.stderr
    assert site.console("task:list").returncode == 0
    r = site.console("scheduler:reload")  # needs the file: refused, the daemon keeps its config
    assert r.returncode == 2 and "invalid TOML" in r.stderr
    assert site.console("job:add", "noop").returncode == 2  # needs the whole config: refused
    r = site.console("scheduler:stop")
    assert r.returncode == 0, r.stderr
    site.wait_for(lambda: site.pid() is None or not _alive(pid), what="the daemon to end")
    assert not record.exists()
    r = site.console("scheduler:state")  # no daemon: the broken file is the error
    assert r.returncode == 2 and "invalid TOML" in r.stderr and "warning" not in r.stderr


def _alive(pid: int | None) -> bool:
    import os

    try:
        os.kill(pid or 0, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_stale_record_is_not_trusted(site):
    """A record left by kill -9 names a daemon that is gone: the broken file is the error."""
    site.write('[tasks.t]\ntype = "command"\nperiod = "1h"\nargv = ["true"]\n')
    site.pidfile.parent.mkdir(parents=True)
    site.pidfile.write_text("999999\n")
    site.pidfile.with_name("schedulerd.pid.json").write_text(
        f'{{"pid": 999999, "socket": "{site.socket}", "state_dir": "/x", "log_dir": "/x"}}\n')
    _break(site, "tasks")
    r = site.console("task:list")
    assert r.returncode == 2 and "invalid TOML" in r.stderr and "warning" not in r.stderr


def test_plugin_sections_are_validated_through_their_entry_points(tmp_path):
    """[databoxes] and [ftp_destinations] are the plugins' (entry-point group schedulerd.config):
    the engine checks them like its own sections without importing them by name."""
    from schedulerd.registry import config_sections

    assert {"databoxes", "ftp_destinations"} <= set(config_sections())
    main = write(tmp_path, '[databoxes.main]\npath = "db/main.sqlite"\nstorage = "db/main"\n')
    config = load(main)
    assert config.databoxes["main"].path == tmp_path / "db/main.sqlite"
    assert config.sections["databoxes"] is config.databoxes and dict(config.ftp_destinations) == {}
    assert type(config.databoxes["main"]) is config_sections()["databoxes"]
    d = tmp_path / "etc" / "schedulerd.d"
    d.mkdir()
    (d / "10-box.toml").write_text('[databoxes.main]\npath = "db/other.sqlite"\nstorage = "db/other"\n')
    with pytest.raises(ConfigError) as e:
        load(main)
    assert str(e.value) == f"{d / '10-box.toml'}: databoxes.main: duplicate name in [databoxes] (also in {main})"
    (d / "10-box.toml").write_text('[ftp_destinations.x]\nhots = "ftp.example.org"\n')
    with pytest.raises(ConfigError, match=r"ftp_destinations\.x\.hots: unknown setting .*did you mean host\?"):
        load(main)
    (d / "10-box.toml").write_text('[databox.main]\npath = "x"\n')
    with pytest.raises(ConfigError, match=r"databox: unknown section \(known: .*databoxes.*ftp_destinations.*"
                                          r"did you mean databoxes\?"):
        load(main)
