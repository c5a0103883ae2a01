"""Server settings from flags and environment, the committed stubs, and the settings table in the docs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service import protogen
from service.cpus import cgroup_cpu_limit, usable_cpus
from service.settings import ENV_PREFIX, Settings, SettingsError, env_name, flag_name, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_without_flags_or_environment():
    settings = load_settings([], {})
    assert settings == Settings()
    assert settings.host == "127.0.0.1"
    assert settings.address == "127.0.0.1:50051"
    assert settings.max_message_bytes == 32 * 2**20


def test_flag_overrides_environment():
    environ = {"WTABRIDGE_PORT": "7000", "WTABRIDGE_MAX_BATCH_SIZE": "4", "WTABRIDGE_PROVIDER": "cpu"}
    settings = load_settings(["--port", "7001", "--max-batch-delay-ms", "2.5"], environ)
    assert settings.port == 7001
    assert settings.max_batch_size == 4
    assert settings.provider == "cpu"
    assert settings.max_batch_delay_ms == 2.5


def test_blank_environment_value_keeps_default():
    assert load_settings([], {"WTABRIDGE_THREADS": "  "}).threads is None


@pytest.mark.parametrize(
    ("argv", "environ", "fragment"),
    [
        (["--port", "seventy"], {}, "--port='seventy'"),
        (["--max-batch-size", "0"], {}, "--max-batch-size='0'"),
        ([], {"WTABRIDGE_PROVIDER": "tpu"}, "WTABRIDGE_PROVIDER='tpu'"),
        ([], {"WTABRIDGE_PORT": "70000"}, "WTABRIDGE_PORT='70000'"),
    ],
)
def test_invalid_value_names_its_source(argv, environ, fragment):
    with pytest.raises(SettingsError) as caught:
        load_settings(argv, environ)
    assert fragment in str(caught.value)


def test_ipv6_host_is_bracketed():
    assert Settings(host="::1", port=9).address == "[::1]:9"


def test_reasoning_limits_follow_settings():
    limits = Settings(solve_timeout_s=2.0, max_program_bytes=100, solve_memory_mib=64).reasoning_limits()
    assert (limits.wall_seconds, limits.program_bytes, limits.memory_mib) == (2.0, 100, 64)


def test_committed_stubs_match_proto():
    pytest.importorskip("grpc_tools", reason="grpcio-tools regenerates the stubs; install the dev extra")
    assert protogen.check() == [], "stale stubs: run python -m service.protogen"


def test_docs_list_every_setting():
    text = (ROOT / "docs" / "service.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `--")}
    for name, field in Settings.model_fields.items():
        row = rows.get(f"`{flag_name(name)}`")
        assert row is not None, f"docs/service.md has no row for {flag_name(name)}"
        assert f"`{env_name(name)}`" in row
        if name != "model":
            default = "unset" if field.default is None else str(field.default)
            assert f"`{default}`" in row, f"{flag_name(name)}: default {default} missing from docs/service.md"
    assert ENV_PREFIX in text


def run_module(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
    return subprocess.run(
        [sys.executable, "-m", *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
    )


def test_server_help_lists_flags():
    result = run_module("service", "--help")
    assert result.returncode == 0
    for name in Settings.model_fields:
        assert flag_name(name) in result.stdout


def test_server_rejects_bad_setting_in_one_line():
    result = run_module("service", "--max-batch-size", "-3")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--max-batch-size" in result.stderr
    assert "Traceback" not in result.stderr


def test_server_missing_model_fails_clearly(tmp_path):
    result = run_module("service", "--model", str(tmp_path / "absent.onnx"), "--port", "0")
    assert result.returncode == 2
    # Log lines come first; the error is the last line.
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "absent.onnx: model file not found" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_protogen_check_command():
    pytest.importorskip("grpc_tools", reason="grpcio-tools regenerates the stubs; install the dev extra")
    result = run_module("service.protogen", "--check")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({}, None),
    ],
    ids=["v2-unlimited", "v2-quota", "v1-unlimited", "v1-quota", "no-cgroup"],
)
def test_cgroup_cpu_limit(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == expected


def test_usable_cpus_within_affinity():
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))
