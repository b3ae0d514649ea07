"""The Kubernetes apt key is fetched through the bounded download client (issue 27): from a real HTTP server on
127.0.0.1, cached once per minor by one atomic write, a key larger than MAX_KEY_BYTES refused, a failure said in one
line that tells how to do without the network."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from http_fixture import FileServer

from builder.bases import kubekey
from builder.errors import UserError

REPO = Path(__file__).resolve().parents[2]
ARMORED = (REPO / "tests/data/test-Release.key").read_bytes()
KEY_PATH = "core:/stable:/v1.31/deb/Release.key"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    served = FileServer({KEY_PATH: ARMORED})
    monkeypatch.setattr(kubekey, "KEY_URL", served.url("core:/stable:/v{minor}/deb/Release.key"))
    yield served
    served.close()


def test_the_key_is_downloaded_once_dearmored_and_cached(server: FileServer, tmp_path: Path) -> None:
    keyring = kubekey.kube_keyring("1.31", None, tmp_path)
    assert keyring == kubekey.dearmor(ARMORED, "test") and keyring[0] & 0x80  # binary OpenPGP
    cached = tmp_path / "keys" / "kubernetes-v1.31.gpg"
    assert cached.read_bytes() == keyring and stat.S_IMODE(cached.stat().st_mode) == 0o644
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temporary left beside it
    assert kubekey.kube_keyring("1.31", None, tmp_path) == keyring
    assert len(server.requests_for(KEY_PATH)) == 1  # the second build read the cache


def test_a_dry_run_never_downloads(server: FileServer, tmp_path: Path) -> None:
    assert kubekey.kube_keyring("1.31", None, tmp_path, download=False) is None
    assert server.log == []


def test_a_key_larger_than_any_real_one_is_refused_and_nothing_cached(server: FileServer, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubekey, "MAX_KEY_BYTES", len(ARMORED) - 1)
    with pytest.raises(UserError) as refused:
        kubekey.kube_keyring("1.31", None, tmp_path)
    assert str(refused.value) == (f"cannot download the Kubernetes 1.31 apt key from {server.url(KEY_PATH)} "
                                  f"(larger than {len(ARMORED) - 1} bytes, which no real apt key is): download it "
                                  "elsewhere and pass --kube-key FILE")
    assert not (tmp_path / "keys").exists()


def test_a_missing_key_is_one_line_naming_the_url_and_the_way_around(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(UserError) as missing:
        kubekey.kube_keyring("1.99", None, tmp_path)
    url = server.url("core:/stable:/v1.99/deb/Release.key")
    assert str(missing.value) == (f"cannot download the Kubernetes 1.99 apt key from {url} (HTTP 404 Not Found): "
                                  "download it elsewhere and pass --kube-key FILE")
