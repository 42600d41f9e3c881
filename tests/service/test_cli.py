"""The command line: help lists the subcommands, settings come from TOML, env and flags."""

from __future__ import annotations

import json
import subprocess

from harness.commands import labelqa_cmd, labelqa_env


def run(*args: str, cwd=None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*labelqa_cmd(), *args], capture_output=True, text=True, cwd=cwd, env=labelqa_env(**env),
        timeout=120,
    )


def test_help_lists_subcommands():
    r = run("--help")
    assert r.returncode == 0, r.stderr
    for cmd in ("config",):
        assert cmd in r.stdout


def test_config_show_layers_toml_env(tmp_path):
    cfg = tmp_path / "labelqa.toml"
    cfg.write_text('[listener]\nport = 10400\nae_title = "FROMTOML"\n[api]\ntoken = "Sk3t9Qw2Lz7Xc4Vb"\n')
    r = run("config", "show", "--config", str(cfg), LABELQA_LISTENER__AE_TITLE="FROMENV")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["listener"]["port"] == 10400
    assert shown["listener"]["ae_title"] == "FROMENV"  # env beats file
    assert shown["listener"]["host"] == "127.0.0.1"  # safe default
    assert "Sk3t9Qw2Lz7Xc4Vb" not in r.stdout  # secrets masked


def test_config_show_reads_cwd_labelqa_toml(tmp_path):
    (tmp_path / "labelqa.toml").write_text("[store]\nstable_after_s = 2.5\n")
    r = run("config", "show", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["store"]["stable_after_s"] == 2.5


def test_config_missing_file_is_clear_error(tmp_path):
    r = run("config", "show", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2
    assert "config file not found" in r.stderr


def test_config_bad_value_names_field(tmp_path):
    cfg = tmp_path / "labelqa.toml"
    cfg.write_text("[listener]\nport = 99999\n")
    r = run("config", "show", "--config", str(cfg))
    assert r.returncode != 0
    assert "port" in (r.stderr + r.stdout)
