"""Base images by name, downloaded from a real HTTP server on 127.0.0.1: a real compressed sample image and a
SHA256SUMS signed with a throwaway OpenPGP key, made at test time. Each story checks what lands in the cache (and
what must not), and what the server saw."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner
from http_fixture import FileServer

from builder.bases import download
from builder.bases.catalog import resolve_base
from builder.cli.bases import COMMANDS
from builder.errors import UserError
from builder.image.inputs import raw_image
from builder.progress import human_size
from builder.run import run
from builder.samples import make_sample

REPO = Path(__file__).resolve().parents[2]
IMAGE = "ubuntu-24.04.5-preinstalled-server-arm64+raspi.img.xz"


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """The raw Ubuntu-layout sample and its xz-compressed bytes (several xz blocks)."""
    root = tmp_path_factory.mktemp("download-sample")
    raw = make_sample("ubuntu-raspi", root / "sample.img", release="22.04", size=320 << 20)
    run(["xz", "-T0", "-1", "--block-size=16MiB", "-k", str(raw)])
    return raw, (root / "sample.img.xz").read_bytes()


@pytest.fixture(scope="session")
def signer() -> Iterator[dict[str, object]]:
    """Two throwaway signing keys in a private GNUPGHOME: `trusted` (exported as the test keyring) and `other`."""
    home = tempfile.mkdtemp(prefix="pig-gpg-", dir="/tmp")  # short: gpg-agent's socket path has a length limit
    env = {**os.environ, "GNUPGHOME": home}
    fingerprints = []
    for name in ("trusted", "other"):
        subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", f"pi-image {name} test key",
                        "ed25519", "sign", "1d"], env=env, check=True, capture_output=True)
        listing = subprocess.run(["gpg", "--batch", "--with-colons", "--list-keys", f"pi-image {name} test key"],
                                 env=env, check=True, capture_output=True, text=True).stdout
        fingerprints.append(next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")))
    keyring = Path(home) / "test-keyring.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--batch", "--export", fingerprints[0]], env=env, check=True,
                                       capture_output=True).stdout)

    def sign(data: bytes, key: str = "trusted") -> bytes:
        fingerprint = fingerprints[0 if key == "trusted" else 1]
        return subprocess.run(["gpg", "--batch", "--local-user", fingerprint, "--detach-sign", "--output", "-"],
                              input=data, env=env, check=True, capture_output=True).stdout

    yield {"keyring": keyring, "sign": sign}
    subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)
    subprocess.run(["rm", "-rf", home], check=False)


@pytest.fixture
def mirror(sample: tuple[Path, bytes], signer: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """A server with the image, its signed SHA256SUMS, and a user catalog naming it `test-ubuntu`."""
    data = sample[1]
    sums = f"{'0' * 64}  other.img.xz\n{hashlib.sha256(data).hexdigest()} *{IMAGE}\n".encode()
    server = FileServer({IMAGE: data, "SHA256SUMS": sums, "SHA256SUMS.gpg": signer["sign"](sums)})
    (tmp_path / "test-keyring.gpg").write_bytes(signer["keyring"].read_bytes())
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(f"""bases:
  test-ubuntu:
    description: the Ubuntu-layout sample
    target: ubuntu-raspi
    url: {server.url(IMAGE)}
    size: {len(data)}
    sums_url: {server.url("SHA256SUMS")}
    sums_signature_url: {server.url("SHA256SUMS.gpg")}
    keyring: test-keyring.gpg
""")
    monkeypatch.setenv("PI_IMAGE_CATALOG", str(catalog))
    monkeypatch.setattr(download, "RETRY_DELAY", 0.01)
    yield {"server": server, "data": data, "sha256": hashlib.sha256(data).hexdigest(), "cache": tmp_path / "cache",
           "catalog": catalog, "sign": signer["sign"]}
    server.close()


def cache_files(cache: Path) -> list[str]:
    """Every name in CACHE/downloads except the lock files and the by-url records."""
    directory = cache / "downloads"
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock") and p.name != "by-url") \
        if directory.exists() else []


def test_a_catalog_base_is_downloaded_once_checked_against_its_signed_sums_and_unpacks(mirror, sample) -> None:
    server, cache = mirror["server"], mirror["cache"]
    path = resolve_base("test-ubuntu", cache_dir=cache)
    assert path == cache / "downloads" / f"{mirror['sha256']}.img.xz"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == mirror["sha256"]
    assert cache_files(cache) == [path.name]
    assert not list((cache / "downloads").glob("*.lock"))  # the lock goes with the process that held it
    assert path.stat().st_mtime == 1_796_083_200  # the server's Last-Modified (builds take their epoch from it)
    assert [entry[0] for entry in server.log] == ["SHA256SUMS", "SHA256SUMS.gpg", IMAGE]
    assert resolve_base("test-ubuntu", cache_dir=cache) == path  # the second time: the cache, no request at all
    assert len(server.log) == 3
    unpacked = raw_image(path, cache)
    assert subprocess.run(["cmp", str(unpacked), str(sample[0])], check=False).returncode == 0


def test_a_download_cut_mid_stream_resumes_with_a_range_request(mirror) -> None:
    server, size = mirror["server"], len(mirror["data"])
    server.cut(IMAGE, after=size * 2 // 5)
    path = resolve_base("test-ubuntu", cache_dir=mirror["cache"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == mirror["sha256"]
    image_requests = server.requests_for(IMAGE)
    assert image_requests == [(IMAGE, None, 200), (IMAGE, f"bytes={size * 2 // 5}-", 206)]
    image_bytes = server.sent - len(server.files["SHA256SUMS"]) - len(server.files["SHA256SUMS.gpg"])
    assert image_bytes == size  # the file once, not once and a half


def test_a_server_that_ignores_range_makes_the_download_start_over_cleanly(mirror) -> None:
    server = mirror["server"]
    server.cut(IMAGE, after=len(mirror["data"]) // 3)
    server.ignore_range = True
    path = resolve_base("test-ubuntu", cache_dir=mirror["cache"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == mirror["sha256"]
    assert [status for _, _, status in server.requests_for(IMAGE)] == [200, 200]
    assert cache_files(mirror["cache"]) == [path.name]


def test_a_download_cut_every_time_is_never_used_and_the_next_run_resumes_it(mirror) -> None:
    server, cache, step = mirror["server"], mirror["cache"], len(mirror["data"]) // 5
    server.cut(IMAGE, after=step, times=download.ATTEMPTS)
    with pytest.raises(UserError) as caught:
        resolve_base("test-ubuntu", cache_dir=cache)
    part = cache / "downloads" / f".{download._key(server.url(IMAGE))}.part"
    held = human_size(step * download.ATTEMPTS)
    assert f"was cut {download.ATTEMPTS} times ({held} arrived in all; the last cut: " in str(caught.value)
    assert str(caught.value).endswith(f"); {held} kept in {part}: run the same command again to resume it, or "
                                      f"`rm {part}*` to drop it")
    left = cache_files(cache)
    assert left == [part.name, part.name + ".json"]  # nothing looks complete
    assert download.cached(mirror["server"].url(IMAGE), cache) is None
    with pytest.raises(UserError, match="not downloaded yet"):
        resolve_base("test-ubuntu", cache_dir=cache, download=False)
    path = resolve_base("test-ubuntu", cache_dir=cache)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == mirror["sha256"]
    assert server.requests_for(IMAGE)[-1][1] == f"bytes={step * download.ATTEMPTS}-"
    assert cache_files(cache) == [path.name]


def test_a_download_that_is_not_the_file_its_hash_names_is_deleted(mirror) -> None:
    server, cache = mirror["server"], mirror["cache"]
    wrong = bytearray(mirror["data"])
    wrong[len(wrong) // 2] ^= 0xFF
    server.wrong[IMAGE] = bytes(wrong)
    with pytest.raises(UserError) as caught:
        resolve_base("test-ubuntu", cache_dir=cache)
    message = str(caught.value)
    assert f"expected {mirror['sha256']}, got {hashlib.sha256(wrong).hexdigest()}" in message
    assert "nothing was cached" in message
    assert cache_files(cache) == []


def test_a_tampered_sums_file_is_refused_before_the_image_is_requested(mirror) -> None:
    server = mirror["server"]
    server.files["SHA256SUMS"] = server.files["SHA256SUMS"].replace(b"0000", b"1111", 1)
    with pytest.raises(UserError, match=r"SHA256SUMS: its signature does not verify with test-keyring\.gpg"):
        resolve_base("test-ubuntu", cache_dir=mirror["cache"])
    assert server.requests_for(IMAGE) == []
    assert cache_files(mirror["cache"]) == []


def test_a_sums_file_cut_mid_body_is_one_line_and_nothing_is_believed_or_cached(mirror) -> None:
    server = mirror["server"]
    server.cut("SHA256SUMS", after=len(server.files["SHA256SUMS"]) // 2)
    with pytest.raises(UserError) as caught:
        resolve_base("test-ubuntu", cache_dir=mirror["cache"])
    message = str(caught.value)
    assert message.startswith(f"{server.url('SHA256SUMS')}: the transfer of this checksum file was cut ("), message
    assert message.endswith("): try again; cached bases still work: `pi-image bases`") and "\n" not in message
    assert server.requests_for(IMAGE) == [] and cache_files(mirror["cache"]) == []
    path = resolve_base("test-ubuntu", cache_dir=mirror["cache"])  # the next run: the whole file, believed
    assert hashlib.sha256(path.read_bytes()).hexdigest() == mirror["sha256"]


def test_a_sums_file_signed_by_another_key_is_refused(mirror) -> None:
    server = mirror["server"]
    server.files["SHA256SUMS.gpg"] = mirror["sign"](server.files["SHA256SUMS"], key="other")
    with pytest.raises(UserError, match="its signature does not verify"):
        resolve_base("test-ubuntu", cache_dir=mirror["cache"])
    assert server.requests_for(IMAGE) == []


def test_an_image_the_server_does_not_have_is_one_line_with_the_url_and_the_status(mirror) -> None:
    del mirror["server"].files[IMAGE]
    with pytest.raises(UserError) as caught:
        resolve_base("test-ubuntu", cache_dir=mirror["cache"])
    assert str(caught.value).startswith(f"{mirror['server'].url(IMAGE)}: HTTP 404 Not Found")
    assert "\n" not in str(caught.value)
    assert cache_files(mirror["cache"]) == []


def test_offline_is_one_line_and_cached_bases_still_work(mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    server, cache = mirror["server"], mirror["cache"]
    path = resolve_base("test-ubuntu", cache_dir=cache)
    port = server.port
    server.close()
    assert resolve_base("test-ubuntu", cache_dir=cache) == path
    with pytest.raises(UserError) as caught:
        resolve_base(f"http://127.0.0.1:{port}/other.img.xz#sha256={'0' * 64}", cache_dir=cache)
    assert str(caught.value) == ("cannot reach 127.0.0.1: Connection refused; cached bases still work: "
                                 "`pi-image bases`")

    def no_dns(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(UserError, match=r"^cannot reach mirror\.pi-image\.invalid: Name or service not known; "
                                        r"cached bases still work"):
        resolve_base(f"https://mirror.pi-image.invalid/x.img.xz#sha256={'0' * 64}", cache_dir=cache)


def test_a_full_disk_during_the_download_is_one_line_and_leaves_no_partial_file(mirror) -> None:
    script = f"""
import resource, sys
from pathlib import Path
from builder.bases.catalog import resolve_base
from builder.errors import UserError
limit = {len(mirror['data']) // 2}  # bytes a nearly full disk still takes
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    resolve_base("test-ubuntu", cache_dir=Path({str(mirror['cache'])!r}))
except UserError as err:
    sys.exit(f"pi-image: error: {{err}}")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pi-image: error: no room for test-ubuntu in "), proc.stderr
    assert "File too large" in lines[0] and "the partial download was removed" in lines[0]
    assert cache_files(mirror["cache"]) == []


def test_two_builds_at_once_share_one_download(mirror) -> None:
    server = mirror["server"]
    server.delay = 2.0 / (len(mirror["data"]) // 8192 + 1)  # ~2 s for the image: the second starts meanwhile
    script = f"""
from pathlib import Path
from builder.bases.catalog import resolve_base
print(resolve_base("test-ubuntu", cache_dir=Path({str(mirror['cache'])!r})))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=REPO, env=env) for _ in range(2)]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    paths = {out.strip() for out, _ in outputs}
    assert paths == {str(mirror["cache"] / "downloads" / f"{mirror['sha256']}.img.xz")}
    assert len(server.requests_for(IMAGE)) == 1
    assert any("waiting for another pi-image that is downloading test-ubuntu" in err for _, err in outputs)
    assert hashlib.sha256(Path(paths.pop()).read_bytes()).hexdigest() == mirror["sha256"]


def test_download_off_never_touches_the_network(mirror) -> None:
    server, cache = mirror["server"], mirror["cache"]
    with pytest.raises(UserError, match=r"base test-ubuntu is not downloaded yet and --dry-run never downloads: "
                                        r"run `pi-image fetch test-ubuntu` first"):
        resolve_base("test-ubuntu", cache_dir=cache, download=False)
    with pytest.raises(UserError, match="not downloaded yet"):
        resolve_base(server.url(IMAGE), cache_dir=cache, download=False)
    assert server.log == []
    path = resolve_base("test-ubuntu", cache_dir=cache)
    count = len(server.log)
    assert resolve_base("test-ubuntu", cache_dir=cache, download=False) == path
    assert len(server.log) == count


def test_a_url_outside_the_catalog_is_checked_against_the_sums_beside_it_or_the_hash_appended(mirror) -> None:
    server, cache = mirror["server"], mirror["cache"]
    assert resolve_base(server.url(IMAGE), cache_dir=cache).name == f"{mirror['sha256']}.img.xz"
    assert [path for path, _, _ in server.log] == [f"{IMAGE}.sha256", "SHA256SUMS", IMAGE]
    server.files["plain.img.xz"] = mirror["data"]
    with pytest.raises(UserError, match=r"nothing to check it against .* append #sha256=HEX"):
        resolve_base(server.url("plain.img.xz"), cache_dir=cache)
    assert server.requests_for("plain.img.xz") == []
    with pytest.raises(UserError, match=f"expected {'1' * 64}, got {mirror['sha256']}"):
        resolve_base(server.url("plain.img.xz") + "#sha256=" + "1" * 64, cache_dir=cache)
    fetched = resolve_base(server.url("plain.img.xz") + "#sha256=" + mirror["sha256"].upper(), cache_dir=cache)
    assert fetched.name == f"{mirror['sha256']}.img.xz"
    records = list((cache / "downloads" / "by-url").iterdir())
    assert len(records) == 2 and all(p.suffix == ".json" and p.stat().st_mode & 0o777 == 0o644 for p in records)
    record = json.loads(records[0].read_text())
    assert set(record) == {"url", "name", "file", "sha256", "size"}


def test_a_body_larger_than_the_catalog_says_is_refused(mirror) -> None:
    server = mirror["server"]
    server.files[IMAGE] = mirror["data"] + os.urandom(2 << 20)
    with pytest.raises(UserError, match=r"the server offers 2\.\d MiB, more than the 1\.\d MiB that test-ubuntu's "
                                        r"size in the catalog \(\d+\.\d KiB\) allows: refusing it; a wrong mirror"):
        resolve_base("test-ubuntu", cache_dir=mirror["cache"])
    assert cache_files(mirror["cache"]) == []


def test_fetch_then_bases_show_what_is_cached_and_the_next_step(mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PI_IMAGE_CACHE", str(mirror["cache"]))
    group = click.Group(commands=COMMANDS)
    path = mirror["cache"] / "downloads" / f"{mirror['sha256']}.img.xz"
    first = CliRunner().invoke(group, ["fetch", "test-ubuntu"])
    assert first.exit_code == 0, first.output
    lines = first.output.splitlines()
    assert lines[0].startswith(f"test-ubuntu: downloaded and verified: {path} (")
    assert lines[-2:] == ["1 base ready (1 downloaded, 0 already cached).",
                          "Next: pi-image build --profile worker-8g --base test-ubuntu --ssh-key ~/.ssh/id_ed25519.pub"]
    again = json.loads(CliRunner().invoke(group, ["fetch", "--json", "test-ubuntu"]).output)
    assert again == [{"name": "test-ubuntu", "path": str(path), "sha256": mirror["sha256"],
                      "size": len(mirror["data"]), "downloaded": False}]
    listed = {row["name"]: row for row in json.loads(CliRunner().invoke(group, ["bases", "--json"]).output)}
    assert listed["test-ubuntu"]["cached"] == str(path)
    assert listed["test-ubuntu"]["verification"] == "signed SHA256SUMS (test-keyring.gpg)"
    assert listed["ubuntu-24.04"]["cached"] is None and listed["ubuntu-24.04"]["target"] == "ubuntu-raspi"
    table = CliRunner().invoke(group, ["bases"]).output
    assert any(line.startswith("test-ubuntu ") and line.endswith(str(path)) for line in table.splitlines())
    assert "1 cached in" in table and "pi-image fetch NAME" in table


# Hostile servers: every transfer is bounded in bytes, disk and time, and says what it kept.

def part_of(mirror: dict) -> Path:
    """Where the partial download of the test image goes."""
    return mirror["cache"] / "downloads" / f".{download._key(mirror['server'].url(IMAGE))}.part"


def kept(part: Path) -> str:
    """How a message says that `part` is kept for the next run."""
    return (f"{human_size(part.stat().st_size)} kept in {part}: run the same command again to resume it, or "
            f"`rm {part}*` to drop it")


@pytest.mark.parametrize("bound", ["catalog size", "MAX_DOWNLOAD", "PI_IMAGE_MAX_DOWNLOAD"])
def test_an_endless_body_is_cut_off_at_its_bound_and_nothing_is_kept(mirror, monkeypatch: pytest.MonkeyPatch,
                                                                     bound: str) -> None:
    server, cache, size = mirror["server"], mirror["cache"], len(mirror["data"])
    server.endless.add(IMAGE)  # no Content-Length, zeros for ever
    monkeypatch.setattr(download, "MAX_DOWNLOAD", 3 << 20)
    if bound == "PI_IMAGE_MAX_DOWNLOAD":
        monkeypatch.setenv("PI_IMAGE_MAX_DOWNLOAD", "2M")
    base = "test-ubuntu" if bound == "catalog size" else f"{server.url(IMAGE)}#sha256={mirror['sha256']}"
    with pytest.raises(UserError) as caught:
        resolve_base(base, cache_dir=cache)
    said = {"catalog size": f"the {human_size(size + (1 << 20))} that test-ubuntu's size in the catalog "
                            f"({human_size(size)}) allows: refusing it, and the partial download was removed; a wrong "
                            "mirror, or a wrong size in the catalog?",
            "MAX_DOWNLOAD": "the 3.0 MiB a download may reach when the catalog gives no size (PI_IMAGE_MAX_DOWNLOAD): "
                            "refusing it, and the partial download was removed; if the file really is that large, "
                            "set PI_IMAGE_MAX_DOWNLOAD higher (e.g. 64G) and run again",
            "PI_IMAGE_MAX_DOWNLOAD": "the 2.0 MiB a download may reach when the catalog gives no size"}[bound]
    assert str(caught.value).startswith(f"{server.url(IMAGE)}: the server sent more than {said}")
    assert cache_files(cache) == [] and not list((cache / "downloads").glob(".*.lock"))
    time.sleep(0.3)
    sent = server.sent
    time.sleep(0.2)
    assert server.sent == sent < 64 << 20  # the connection was closed: the server's writes stopped


def test_a_size_setting_that_is_not_one_is_one_line(mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PI_IMAGE_MIN_RATE", "fast")
    with pytest.raises(UserError) as caught:
        resolve_base("test-ubuntu", cache_dir=mirror["cache"])
    assert str(caught.value) == "PI_IMAGE_MIN_RATE=fast: not a number of bytes: write one like 1048576, 512K, 16G"


@pytest.mark.parametrize("length", ["Content-Length", "no Content-Length"])
def test_a_download_never_takes_the_last_free_space_of_the_cache(mirror, monkeypatch: pytest.MonkeyPatch,
                                                                 length: str) -> None:
    server, cache = mirror["server"], mirror["cache"]
    if length == "no Content-Length":
        server.endless.add(IMAGE)
    statvfs, directory = os.statvfs, cache / "downloads"

    def nearly_full(path: object) -> object:  # 1 GiB and 16 KiB free where the downloads go (the image: ~60 KiB)
        if Path(str(path)) == directory:
            return SimpleNamespace(f_bavail=(download.FREE_MARGIN + (16 << 10)) // 4096, f_frsize=4096)
        return statvfs(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "statvfs", nearly_full)
    with pytest.raises(UserError) as caught:
        resolve_base("test-ubuntu", cache_dir=cache)
    what = (f"the 16.0 KiB the cache can take (the free space of {directory} less 1.0 GiB kept spare): refusing it"
            f"{', and the partial download was removed' if length == 'no Content-Length' else ''}; free some space "
            "(or set PI_IMAGE_CACHE to a bigger disk) and run again")
    offer = "sent" if length == "no Content-Length" else f"offers {human_size(len(mirror['data']))},"
    assert str(caught.value) == f"{server.url(IMAGE)}: the server {offer} more than {what}"
    assert cache_files(cache) == []


def test_a_trickling_server_is_abandoned_below_the_floor_rate_and_the_next_run_resumes(
        mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    server, cache, part = mirror["server"], mirror["cache"], part_of(mirror)
    monkeypatch.setattr(download, "RATE_WINDOW", 1.0)  # seconds (60 for real)
    monkeypatch.setattr(download, "MIN_RATE", 4096)
    server.trickle["SHA256SUMS"] = server.trickle[IMAGE] = 0.05  # 20 bytes a second, each alone
    monkeypatch.setenv("PI_IMAGE_MIN_RATE", "2K")
    started = time.monotonic()
    with pytest.raises(UserError) as caught:
        resolve_base("test-ubuntu", cache_dir=cache)
    floor = (r"\d+ B in the last 1 s, below the floor of {rate} \(on a link that slow, set PI_IMAGE_MIN_RATE lower, "
             r"e\.g\. 8K; 0 turns the floor off\)")
    assert re.fullmatch(f"{re.escape(server.url('SHA256SUMS'))}: the transfer of this checksum file was abandoned: "
                        f"{floor.format(rate='2.0 KiB/s')}; cached bases still work: `pi-image bases`",
                        str(caught.value)), caught.value
    monkeypatch.delenv("PI_IMAGE_MIN_RATE")
    del server.trickle["SHA256SUMS"]
    with pytest.raises(UserError) as caught:
        resolve_base("test-ubuntu", cache_dir=cache)
    assert time.monotonic() - started < 10  # not the ~50 min the trickle would take
    assert re.fullmatch(f"test-ubuntu: the download from {re.escape(server.url(IMAGE))} was abandoned: "
                        f"{floor.format(rate='4.0 KiB/s')}; {re.escape(kept(part))}", str(caught.value)), caught.value
    assert len(server.requests_for(IMAGE)) == 1  # abandoned, not tried again
    held = part.stat().st_size
    assert 0 < held < 100
    del server.trickle[IMAGE]
    path = resolve_base("test-ubuntu", cache_dir=cache)
    assert server.requests_for(IMAGE)[-1] == (IMAGE, f"bytes={held}-", 206)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == mirror["sha256"]


def test_a_cut_download_says_what_arrived_even_from_a_server_it_cannot_resume_from(mirror) -> None:
    server, cache = mirror["server"], mirror["cache"]
    server.validators = False  # no ETag, no Last-Modified: each try starts over, and nothing is worth keeping
    server.cut(IMAGE, after=30_000, times=download.ATTEMPTS)
    with pytest.raises(UserError) as caught:
        resolve_base("test-ubuntu", cache_dir=cache)
    message = str(caught.value)
    assert re.fullmatch(f"test-ubuntu: the download from {re.escape(server.url(IMAGE))} was cut 3 times "
                        rf"\({re.escape(human_size(3 * 30_000))} arrived in all; the last cut: [^;]+\); nothing was "
                        "kept to resume from: run the same command again to start over", message), message
    assert [range_header for _, range_header, _ in server.requests_for(IMAGE)] == [None] * 3
    assert cache_files(cache) == []


@pytest.mark.parametrize("second", ["another hash", "the same hash"])
def test_a_sums_file_that_lists_the_image_twice_is_believed_only_if_it_agrees_with_itself(mirror, second: str) -> None:
    server, cache, sha256 = mirror["server"], mirror["cache"], mirror["sha256"]
    other = "1" * 64 if second == "another hash" else sha256.upper()
    sums = server.files["SHA256SUMS"] + f"{other}  ./{IMAGE}\n".encode()
    server.files["SHA256SUMS"], server.files["SHA256SUMS.gpg"] = sums, mirror["sign"](sums)
    if second == "the same hash":
        assert resolve_base("test-ubuntu", cache_dir=cache).name == f"{sha256}.img.xz"
        return
    with pytest.raises(UserError) as caught:
        resolve_base("test-ubuntu", cache_dir=cache)
    assert str(caught.value).startswith(f"{server.url('SHA256SUMS')} lists {IMAGE} twice with different SHA-256s "
                                        f"({sha256} and {other}): refusing both, nothing was downloaded; ")
    assert server.requests_for(IMAGE) == [] and cache_files(cache) == []


@pytest.mark.parametrize("resumable", [True, False])
def test_an_interrupted_download_says_exactly_what_it_kept(mirror, monkeypatch: pytest.MonkeyPatch,
                                                           resumable: bool) -> None:
    server, cache, part = mirror["server"], mirror["cache"], part_of(mirror)
    server.validators = resumable
    server.delay = 0.5  # 8 KiB every 0.5 s (each file): ~4 s for the image, stopped after its first 8 KiB
    monkeypatch.setenv("PI_IMAGE_CACHE", str(cache))
    proc = subprocess.Popen([sys.executable, "-m", "builder", "fetch", "test-ubuntu"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 10
    while not (part.exists() and part.stat().st_size >= 8192) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 130, stderr
    said = kept(part) if resumable else "nothing was kept to resume from: run the same command again to start over"
    assert stderr.splitlines() == [f"pi-image: interrupted: test-ubuntu: {said}"]
    assert cache_files(cache) == ([part.name, part.name + ".json"] if resumable else [])
    assert not list((cache / "downloads").glob(".*.lock"))
    server.delay = 0
    held = part.stat().st_size if resumable else None
    path = resolve_base("test-ubuntu", cache_dir=cache)
    assert server.requests_for(IMAGE)[-1][1] == (f"bytes={held}-" if resumable else None)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == mirror["sha256"]


def test_fetch_help_states_the_bounds_download_applies() -> None:
    text = " ".join((COMMANDS[1].help or "").split())
    assert COMMANDS[1].name == "fetch"
    assert f"slower than {download.MIN_RATE >> 10} KiB/s over a minute" in text and download.RATE_WINDOW == 60
    assert f"may reach {download.MAX_DOWNLOAD >> 30} GiB" in text
    assert f"the cache's last {download.FREE_MARGIN >> 30} GiB of free space" in text
