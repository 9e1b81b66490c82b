"""The containerd config check: config_path and discard_unpacked_layers, config versions 1-3."""

from __future__ import annotations

from pathlib import Path

import pytest

from spegel_py.hosts import Problem, check_containerd_config

V2_OK = """
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  discard_unpacked_layers = false
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{certs}"
"""
V2_BAD = """
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  discard_unpacked_layers = true
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/somewhere/else"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
    endpoint = ["https://registry-1.docker.io"]
"""
V3_OK = """
version = 3
[plugins.'io.containerd.cri.v1.images']
  discard_unpacked_layers = false
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = '/etc/docker/certs.d:{certs}'
"""
V3_DISCARD = """
version = 3
[plugins.'io.containerd.cri.v1.images']
  discard_unpacked_layers = true
"""
V1_UNSET = """
[plugins.cri.containerd]
  snapshotter = "overlayfs"
"""

CASES = [
    pytest.param(V2_OK, set(), id="v2-ok"),
    pytest.param(
        V2_BAD,
        {Problem.CONFIG_PATH_ELSEWHERE, Problem.LEGACY_MIRRORS, Problem.DISCARD_UNPACKED_LAYERS},
        id="v2-everything-wrong",
    ),
    pytest.param("version = 2\n", {Problem.CONFIG_PATH_UNSET}, id="v2-unset"),
    pytest.param(V3_OK, set(), id="v3-ok-in-a-list"),
    # containerd 2.x reads /etc/containerd/certs.d by default: elsewhere unless that is ours
    pytest.param(
        V3_DISCARD, {Problem.CONFIG_PATH_ELSEWHERE, Problem.DISCARD_UNPACKED_LAYERS}, id="v3-defaults"
    ),
    pytest.param(V1_UNSET, {Problem.CONFIG_PATH_UNSET}, id="v1-unset"),
    pytest.param("version = 2\n[plugins\n", {Problem.CONFIG_UNREADABLE}, id="not-toml"),
    pytest.param("version = 7\n", {Problem.CONFIG_UNREADABLE}, id="unknown-version"),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_check(tmp_path: Path, text: str, expected: set[Problem]) -> None:
    certs = tmp_path / "certs.d"
    config = tmp_path / "config.toml"
    config.write_text(text.replace("{certs}", str(certs)))
    warnings = check_containerd_config(config, certs)
    assert {w.problem for w in warnings} == expected
    for w in warnings:
        assert "\n" not in str(w)
        assert str(config) in str(w) or w.problem is Problem.CONFIG_UNREADABLE


def test_messages_name_the_key_to_fix(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(V2_BAD)
    text = " | ".join(str(w) for w in check_containerd_config(config, tmp_path / "certs.d"))
    assert 'plugins."io.containerd.grpc.v1.cri".registry.config_path' in text
    assert "'/somewhere/else'" in text
    assert 'plugins."io.containerd.grpc.v1.cri".containerd.discard_unpacked_layers = true' in text


def test_same_directory_through_a_symlink_counts(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    config = tmp_path / "config.toml"
    config.write_text(V2_OK.replace("{certs}", str(tmp_path / "link")))
    assert check_containerd_config(config, tmp_path / "real") == []


def test_imports_override_the_main_file(tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-discard.toml").write_text(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\ndiscard_unpacked_layers = true\n'
    )
    config = tmp_path / "config.toml"
    config.write_text('imports = ["conf.d/*.toml"]\n' + V2_OK.replace("{certs}", str(certs)))
    assert [w.problem for w in check_containerd_config(config, certs)] == [Problem.DISCARD_UNPACKED_LAYERS]


def test_a_missing_file_is_reported_as_not_checked(tmp_path: Path) -> None:
    warnings = check_containerd_config(tmp_path / "absent.toml", tmp_path / "certs.d")
    assert [w.problem for w in warnings] == [Problem.CONFIG_NOT_FOUND]
    assert "not checked" in str(warnings[0])


def test_the_testbed_node_config_passes(tmp_path: Path) -> None:
    """The shape of config the project's containerd test nodes run with (tests/harness/containerd.py)."""
    certs = tmp_path / "certs.d"
    config = tmp_path / "config.toml"
    config.write_text(f"""version = 2
root = "{tmp_path}/root"
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "{certs}"
""")
    assert check_containerd_config(config, certs) == []
