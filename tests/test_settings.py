"""Settings: file -> environment -> flags, strict validation with the key and its source named,
the commented example config, and ``edge-agent config check|show`` / ``serve`` failing fast."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.errors import ConfigError
from edge_agent.settings import SECTIONS, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "packaging" / "config.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = _write(tmp_path, '[server]\nport = 9100\nthreads = 3\npreload_models = ["a/1"]\n'
                            '[engine]\nproviders = ["cuda"]\n[server.aliases]\n"x-640" = "coco/3"\n')
    env = {"EDGE_AGENT_SERVER__THREADS": "5", "EDGE_AGENT_SERVER__URL_ALLOWED_HOSTS": "a.example, b.example",
           "EDGE_AGENT_STATE_DIR": str(tmp_path / "state")}
    s = load_settings(path, env, overrides={"server.threads": 7})
    assert s.server.port == 9100  # file
    assert s.server.threads == 7  # flag over environment over file
    assert s.server.url_allowed_hosts == ("a.example", "b.example")
    assert s.server.preload_models == ("a/1",)
    assert s.server.aliases == {"x-640": "coco/3"}
    assert s.engine_prefs.providers == ("cuda",)
    assert s.state_dir == tmp_path / "state"
    assert s.models_dir == tmp_path / "state" / "models"
    assert s.config_file == path
    assert load_settings(path, {**env, "EDGE_AGENT_SERVER__THREADS": "5"}).server.threads == 5


def test_no_file_means_defaults(tmp_path: Path) -> None:
    s = load_settings(None, {"EDGE_AGENT_CONFIG": "", "EDGE_AGENT_STATE_DIR": str(tmp_path)})
    assert s.config_file is None
    assert s.server.port == 9001
    assert s.server.batching == "auto"
    assert s.state_dir == tmp_path
    assert s.engine_prefs.backend == "auto"


@pytest.mark.parametrize(("text", "message"), [
    ("[server]\nport = 9001\nprot = 1\n",
     r"config\.toml line 3: unknown key 'server\.prot' \(known in \[server\]: host"),
    ("[sever]\nport = 1\n", r"config\.toml line 1: unknown section or key 'sever'"),
    ("\n[server]\nport = 70000\n", r"config\.toml line 3: server\.port: Input should be less than or equal to 65535"),
    ("[server]\nbatching = \"sometimes\"\n", r"line 2: server\.batching: Input should be 'auto', 'on' or 'off'"),
    ("[server]\nport = \n", r"not valid TOML"),
    ("[server]\napi_key = 12\n", r"server\.api_key: Input should be a valid string \(got \*\*\*\)"),
    ("[mqtt]\ntls_ca_file = \"/nonexistent/ca.pem\"\n", r"line 2: mqtt\.tls_ca_file: Path does not point to a file"),
    ("[mqtt]\ntls_cert_file = \"/etc/hostname\"\n", r"\[mqtt\]: tls_cert_file and tls_key_file go together"),
    ("[mqtt]\npassword = \"pw\"\n", r"\[mqtt\]: password needs a username"),
    ("[mqtt]\ndevice_id = \"line/3\"\n", r"line 2: mqtt\.device_id: String should match pattern"),
    ("[mqtt]\ntopic_prefix = \"a/#\"\n", r"mqtt\.topic_prefix: String should match pattern"),
    ("[mqtt]\nprotocol = \"4\"\n", r"mqtt\.protocol: Input should be 'auto', '5' or '3\.1\.1'"),
    ("[mqtt]\npassword = 5\nusername = \"u\"\n", r"mqtt\.password: Input should be a valid string \(got \*\*\*\)"),
    ("[active_learning]\nenabled = true\n", r"\[active_learning\]: enabled without strategies"),
    ("[active_learning]\ntargets = [\"http\"]\n", r"the http target needs http_base_url and http_project"),
    ("[[active_learning.strategies]]\nname = \"a\"\ntype = \"sometimes\"\n",
     r"strategies\[0\]\.strategy: Input tag 'sometimes' found using 'type' does not match any of the expected tags"),
    ("[[active_learning.strategies]]\nname = \"a\"\ntype = \"random\"\ntraffic_percentage = 2\n",
     r"strategies\[0\]\.random\.traffic_percentage: Input should be less than or equal to 1"),
    ("[active_learning]\nenabled = true\ntargets = [\"mqtt\"]\n[[active_learning.strategies]]\nname = \"a\"\n"
     "type = \"random\"\ntraffic_percentage = 1\n", r"^active_learning\.targets has mqtt but \[mqtt\] is not enabled"),
])
def test_bad_file_names_the_key_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_write(tmp_path, text), {})


@pytest.mark.parametrize(("env", "message"), [
    ({"EDGE_AGENT_SERVER__PROT": "1"}, r"environment variable EDGE_AGENT_SERVER__PROT: unknown setting"),
    ({"EDGE_AGENT_PORT": "1"}, r"environment variable EDGE_AGENT_PORT: unknown setting"),
    ({"EDGE_AGENT_SERVER__PORT": "nine"}, r"environment variable EDGE_AGENT_SERVER__PORT: server\.port: Input "
                                          r"should be a valid integer"),
    ({"EDGE_AGENT_SERVER__ALLOW_NUMPY": "maybe"}, r"EDGE_AGENT_SERVER__ALLOW_NUMPY: server\.allow_numpy"),
    ({"EDGE_AGENT_CONFIG": "/nonexistent/edge-agent.toml"}, r"/nonexistent/edge-agent\.toml: cannot read"),
])
def test_bad_environment_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(None, env)


def test_secrets_are_masked(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, '[server]\napi_key = "hunter2"\n[mqtt]\nusername = "u"\npassword = "pw42"\n'),
                      {})
    assert s.server.api_key is not None
    assert s.server.api_key.get_secret_value() == "hunter2"
    assert s.mqtt.password is not None
    assert s.mqtt.password.get_secret_value() == "pw42"
    assert s.public()["server"]["api_key"] == "***"
    assert s.public()["mqtt"]["password"] == "***"
    for secret in ("hunter2", "pw42"):
        assert secret not in repr(s)
        assert secret not in str(s.public())


def test_example_config_is_complete_and_shows_the_defaults(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    assert load_settings(EXAMPLE, {}).server.port == 9001  # as shipped (all commented): valid
    # Every example line uncommented, except files that exist only on a device.
    uncommented = "\n".join(line if re.match(r"^# tls_\w+_file = ", line) else
                            re.sub(r"^# ?(?=\[|[\w\"]+[\w\-\"]* = )", "", line) for line in text.splitlines())
    s = load_settings(_write(tmp_path, uncommented), {})
    defaults = load_settings(None, {"EDGE_AGENT_CONFIG": ""})
    examples_only = {("server", "api_key"), ("server", "preload_models"), ("server", "aliases"),
                     ("paths", "state_dir"), ("paths", "cache_dir"), ("mqtt", "username"), ("mqtt", "password"),
                     ("mqtt", "device_id"), ("pipelines", "streams"), ("active_learning", "folder"),
                     ("active_learning", "http_base_url"), ("active_learning", "http_project"),
                     ("active_learning", "http_api_key"), ("active_learning", "strategies"),
                     ("active_learning", "batching_strategy"),
                     ("engine", "dla_core"), ("engine", "calibration_images"), ("engine", "check_images"),
                     ("models", "check_images"), ("models", "api_key")}
    for section, model in SECTIONS.items():
        for key in model.model_fields:
            shown = (re.search(rf"^# {key} = ", text, re.M) or re.search(rf"^# \[{section}\.{key}\]$", text, re.M)
                     or re.search(rf"^# \[\[{section}\.{key}\]\]$", text, re.M))
            assert shown, f"{section}.{key} is missing from {EXAMPLE.name}"
            if (section, key) not in examples_only:
                assert getattr(getattr(s, section), key) == getattr(getattr(defaults, section), key), key
    assert s.paths.state_dir == Path("/var/lib/edge-agent")
    assert s.paths.cache_dir == Path("/var/cache/edge-agent")


def test_config_check_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write(tmp_path, '[server]\nport = 9123\napi_key = "s3cret"\n')
    assert main(["--config", str(good), "config", "check"]) == 0
    assert f"configuration ok: {good}" in capsys.readouterr().out
    assert main(["--config", str(good), "config", "show"]) == 0
    out = capsys.readouterr().out
    assert '"port": 9123' in out
    assert '"api_key": "***"' in out
    assert "s3cret" not in out
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nthreds = 4\n")
    assert main(["--config", str(bad), "config", "check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "bad.toml line 2: unknown key 'server.threds'" in err


def test_serve_with_a_bad_config_stops_at_once_naming_the_key(tmp_path: Path) -> None:
    bad = _write(tmp_path, "[server]\nport = 9001\nmax_queue = 0\n")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "--config", str(bad), "serve"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"edge-agent: error: {bad} line 3: server.max_queue: Input should be greater than or equal to 1 (got 0)"]
    assert time.monotonic() - t0 < 30
