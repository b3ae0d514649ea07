"""`pi-image flash`: write an image to a card, verify it by reading it back, and stamp the node's identity onto it.

    image --usage map--> ranges that matter --write (table region blanked first)--> fsync --read back, compare-->
    stamp the node (same edit layer, on the card) --> fsck --> partition table region last --> fsync, read back

Only what the image's own filesystems use is written (builder.image.usage: ext4 bitmaps, the FAT), plus everything
pi-image cannot read; free blocks keep the card's old bytes, which nothing references. The partition table goes on
last: until then the card's first MiB is blank, so an interrupted flash never leaves a card that looks valid (and
`pi-image inspect` says what happened). Verification reads the card itself, with its page cache dropped, never the
bytes that were sent.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firstboot.protocol import NODE_NAME_RE

from ..build import (
    MANIFEST_PATH,
    apply_checked,
    build_manifest,
    manifest_op,
    prepare,
    request_from_recipe,
)
from ..build.recipes import Recipe, load_recipe, same_base
from ..cluster import (
    Cluster,
    Node,
    check_writable,
    load_cluster,
    next_free_node,
    record_generation,
    same_profile,
)
from ..errors import UserError
from ..image import DiskImage
from ..image.inputs import raw_image
from ..image.partitions import TABLE_BYTES
from ..image.usage import UsageMap, usage_map
from ..plan.steps import BuildContext
from ..progress import human_size, progress
from ..targets import detect
from .devices import Device, check_target, open_target

CHUNK = 1 << 20  # bytes per write (large and aligned), and the unit all-zero data is found in
BATCH = 64 << 20  # bytes synced and then verified together
ZEROS = bytes(CHUNK)
BLKZEROOUT = 0x127F  # _IO(0x12, 127): zero a byte range of a block device
PUNCH_HOLE = 0x03  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_FALLOCATE = ctypes.CDLL(None, use_errno=True).fallocate64  # 64-bit offsets on 32-bit hosts too (armhf)
_FALLOCATE.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
MAX_MANIFEST = 4 << 20


class FlashInterrupted(UserError):
    """The flash stopped after it began writing: the card has no partition table now."""


@dataclass
class FlashRequest:
    """What the user asked for (the CLI's arguments)."""

    image: Path
    device: Path
    cluster: Path | None = None  # where the image's recipe and the node's inventory entry are
    node: str | None = None  # default: the next free node of the image's profile (for a profile image)
    verify: bool = True
    force: bool = False  # a disk that does not look removable
    confirm: Callable[[str], bool] | None = None  # asked before anything is written; None: --yes


@dataclass
class FlashResult:
    """What a flash did."""

    image: Path
    device: Device
    previous: str  # what the card held before
    usage: UsageMap
    written: int = 0  # bytes of the image put on the card (written, or zeroed where they are all zeros)
    zeroed: int = 0  # of those, all-zero chunks made zero without writing them
    verified: int = 0
    seconds: float = 0.0
    stamped: BuildContext | None = None
    added_node: bool = False  # the stamped node was added to the inventory by this flash
    manifest: dict[str, Any] | None = None  # the image's build record (the card's, once stamped)


@dataclass
class _Stamp:
    """A node to stamp onto the card: its build plan and the card's manifest."""

    ctx: BuildContext
    manifest: dict[str, Any]
    cluster: Cluster
    added: bool


def flash(request: FlashRequest) -> FlashResult:
    """Write request.image to request.device (see the module docstring); raise UserError before touching the card
    for every bad input."""
    raw = raw_image(request.image)
    image = DiskImage(raw)
    manifest = image_manifest(image)
    device = open_target(request.device)
    check_target(device, image.size, force=request.force, image=raw)
    recipe = _stamp_recipe(request, manifest)
    previous = card_contents(device)
    usage = usage_map(raw, (image.table, image.partitions))
    if request.confirm is not None and not request.confirm(_question(request, device, previous, recipe)):
        raise UserError("nothing was written")
    stamp = _plan_stamp(request, raw, manifest, recipe) if recipe else None  # may add the node: after the question
    result = FlashResult(request.image, device, previous, usage, manifest=stamp.manifest if stamp else manifest)
    started = time.monotonic()
    _write_card(raw, image, device, usage, stamp, request.verify, result)
    result.seconds = time.monotonic() - started
    if stamp is not None:
        result.stamped, result.added_node = stamp.ctx, stamp.added
    return result


def image_manifest(image: DiskImage) -> dict[str, Any] | None:
    """The build record (/etc/pi-image/build.json) of a pi-image image, or None for any other image."""
    try:
        root = detect(image).root
    except UserError:
        return None  # not an OS pi-image knows: written as it is
    st = root.lstat(MANIFEST_PATH)
    if st is None or not st.is_file or st.size > MAX_MANIFEST:
        return None
    try:
        data = json.loads(root.read(MANIFEST_PATH))
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def card_contents(device: Device) -> str:
    """What is on the card now, in a few words: a pi-image node, partitions and labels, or nothing readable."""
    if device.kind == "file" and device.size == 0:
        return "nothing (a new file)"
    try:
        card = DiskImage(device.path)
    except UserError:
        return "no partition table pi-image can read"
    except OSError as err:
        return f"unreadable ({err.strerror})"
    manifest = image_manifest(card)
    if manifest and _printable(manifest.get("node")) and not manifest.get("stamp_at_flash"):
        cluster = f" of cluster {manifest['cluster']}" if _printable(manifest.get("cluster")) else ""
        return f"pi-image node {manifest['node']}{cluster}"
    parts = ", ".join(f"{p.label or p.name or p.number} ({p.fs or 'unknown'})" for p in card.partitions)
    return f"{len(card.partitions)} partition{'s' if len(card.partitions) != 1 else ''}: {parts}"


def _printable(value: object) -> bool:
    """True for a name read from a card that is safe to show (a node or cluster name, nothing else)."""
    return isinstance(value, str) and NODE_NAME_RE.match(value) is not None


def _question(request: FlashRequest, device: Device, previous: str, recipe: Recipe | None) -> str:
    node = "" if recipe is None else f", as node {request.node}" if request.node else \
        f", as the next free {recipe.profile} node"
    return (f"Write {request.image}{node} to {device.describe()}?\n"
            f"  It holds {previous} now: everything on it is replaced.")


# --- the node's identity --------------------------------------------------------------------------------------------

def _stamp_recipe(request: FlashRequest, manifest: dict[str, Any] | None) -> Recipe | None:
    """The recipe to stamp a node from, or None when the image is written as it is; UserError for what cannot be
    (all before anything is asked or written)."""
    manifest = manifest or {}
    recipe_id, profile_image = manifest.get("recipe"), bool(manifest.get("stamp_at_flash"))
    if recipe_id is None:
        if request.node:
            raise UserError(f"{request.image} was built without a cluster, so no node can be stamped onto it: build "
                            "it with `pi-image build --cluster DIR --profile PROFILE`")
        return None
    if request.cluster is None:
        if profile_image:
            raise UserError(f"{request.image} is a profile image of cluster {manifest.get('cluster')}: pass --cluster "
                            "DIR (or set PI_IMAGE_CLUSTER) so a node can be stamped onto the card")
        return None
    if not profile_image:
        if request.node in (None, manifest.get("node")):
            return None if request.node is None else load_recipe(request.cluster, recipe_id, request.image)
        raise UserError(f"{request.image} is node {manifest.get('node')}'s own image: its files name that node, so "
                        f"it cannot become {request.node}; flash the profile image (`pi-image build --cluster DIR "
                        "--profile PROFILE`), or that node's own")
    check_writable(request.cluster)
    return load_recipe(request.cluster, recipe_id, request.image)


def _plan_stamp(request: FlashRequest, raw: Path, manifest: dict[str, Any] | None, recipe: Recipe) -> _Stamp:
    """The node's plan against the image itself (after the question: a node it picks joins the inventory)."""
    assert request.cluster is not None and manifest is not None
    cluster = load_cluster(request.cluster)
    node, added = _choose_node(cluster, request, recipe)
    ctx = prepare(request_from_recipe(recipe, raw, request.cluster, node.name))
    stamped = build_manifest(ctx, recipe.base, manifest["recipe"])
    for key in ("pi_image_version", "target", "profile", "overlays"):
        if stamped[key] != manifest.get(key):
            raise UserError(f"the {key.replace('_', ' ')} {request.image} was built with has changed since (see "
                            f"its {MANIFEST_PATH}): rebuild the image, so that every card of it is the same")
    return _Stamp(ctx, stamped, cluster, added)


def _choose_node(cluster: Cluster, request: FlashRequest, recipe: Recipe) -> tuple[Node, bool]:
    """The inventory node the card becomes: --node, else the next free node of the image's profile and base (a node
    never built yet, else a new one added to the inventory)."""
    if request.node is None:
        return next_free_node(cluster, recipe.profile, _inventory_base(cluster, recipe))
    node = cluster.node(request.node)
    if not same_profile(node.profile, recipe.profile):
        raise UserError(f"node {node.name!r} has profile {node.profile} in {cluster.directory / 'inventory.yaml'} "
                        f"but {request.image} is a {recipe.profile} image: flash that node's profile image")
    if node.base and not same_base(node.base, recipe.base):
        raise UserError(f"node {node.name!r} is built from {node.base} ({cluster.directory / 'inventory.yaml'}) but "
                        f"{request.image} from {recipe.base.get('name') or recipe.base.get('path')}: flash an image "
                        "of that base")
    return node, False


def _inventory_base(cluster: Cluster, recipe: Recipe) -> str | None:
    """The image's base as the inventory spells it, for next_free_node (which compares the words): the base of the
    first never-built node of the image's profile whose base is the image's (by name, or a file by its content),
    else the image's catalog name or URL (None for a file)."""
    for node in cluster.nodes:
        if node.generation == 0 and same_profile(node.profile, recipe.profile) and node.base \
                and same_base(node.base, recipe.base):
            return node.base
    return recipe.base.get("name")


# --- writing ----------------------------------------------------------------------------------------------------

def _write_card(raw: Path, image: DiskImage, device: Device, usage: UsageMap, stamp: _Stamp | None, verify: bool,
                result: FlashResult) -> None:
    """Blank the table region, write and verify the ranges, stamp, then write and verify the table region."""
    created = device.kind == "file" and not device.path.exists()
    flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_CREAT if device.kind == "file" else os.O_EXCL)
    with open(raw, "rb") as source:
        out = os.open(device.path, flags, 0o600)
        try:
            _write_opened(source.fileno(), out, raw, image, device, usage, stamp, verify, created, result)
        except BaseException as err:
            _interrupted(err, device, created, result)
        finally:
            os.close(out)


def _write_opened(source: int, out: int, raw: Path, image: DiskImage, device: Device, usage: UsageMap,
                  stamp: _Stamp | None, verify: bool, created: bool, result: FlashResult) -> None:
    """The flash itself, on the card open as `out` (see _write_card)."""
    if device.kind == "file":
        os.fchmod(out, 0o600)  # a card's bytes may hold a credential or a cluster's keys
        if os.fstat(out).st_size < image.size:
            os.ftruncate(out, image.size)
    _blank_tables(out, device, image.size)
    copy = _Copy(source, out, device.path, verify, Zeroer(out, device.kind, created), result)
    copy.run(usage.ranges, f"{device.path}: writing" + (" and verifying" if verify else ""))
    if verify:  # a fake-capacity card wraps late writes onto early blocks: read the first ones again
        copy.reread(next(_batches(usage.ranges), []))
    if stamp is not None:
        _stamp(device, raw, stamp)
        os.fsync(out)  # the stamp is on the card before the table makes it valid
        # the card is this node's newest from now on (if another flash of it won, no table is written)
        record_generation(stamp.cluster.directory, stamp.ctx.node.name, stamp.ctx.node_config["generation"])
    copy.run(usage.last, f"{device.path}: partition table")


def _interrupted(err: BaseException, device: Device, created: bool, result: FlashResult) -> None:
    """After writing began: a file this flash created is removed; anything else is told it holds no table now."""
    if created:
        device.path.unlink(missing_ok=True)
        raise err
    what = "interrupted" if isinstance(err, KeyboardInterrupt) else f"failed ({err})"
    raise FlashInterrupted(f"the flash {what} after {human_size(result.written)}: {device.path} holds no "
                           "partition table now (nothing boots it or mistakes it for a node); run the same "
                           "command again") from None


def _blank_tables(out: int, device: Device, image_size: int) -> None:
    """Zero where partition tables live (the first MiB, and a GPT backup at the device's end), so until the flash
    writes its own table last, the card holds no valid one."""
    size = max(device.size, image_size)
    for start in sorted({0, max(0, size - TABLE_BYTES)}):
        _pwrite_all(out, bytes(min(TABLE_BYTES, size - start)), start)
    os.fsync(out)


def _chunks(ranges: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    for start, end in ranges:
        for pos in range(start, end, CHUNK):
            yield pos, min(CHUNK, end - pos)


def _batches(ranges: list[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
    """The chunks of `ranges` in groups of about BATCH bytes: each is synced, then read back while the next is
    written."""
    batch: list[tuple[int, int]] = []
    size = 0
    for chunk in _chunks(ranges):
        batch.append(chunk)
        size += chunk[1]
        if size >= BATCH:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


@dataclass
class _Copy:
    """Writes ranges of the image to the card; with `verify`, a second thread reads each synced batch back from the
    card (its cached pages dropped) and compares it with the image while the next batch is written."""

    source: int
    out: int
    path: Path
    verify: bool
    zeroer: Zeroer  # how all-zero chunks are put on the card without writing them
    result: FlashResult

    def run(self, ranges: list[tuple[int, int]], label: str) -> None:
        """Write (and verify) `ranges`; fsync at the end."""
        total = sum(end - start for start, end in ranges)
        pending: queue.Queue[list[tuple[int, int]] | None] = queue.Queue(maxsize=2)
        failure: list[BaseException] = []
        card = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC) if self.verify else -1
        checker = threading.Thread(target=self._check, args=(card, pending, failure), daemon=True)
        if self.verify:
            checker.start()
        done = 0
        try:
            with progress(label, total) as advance:
                for batch in _batches(ranges):
                    for pos, length in batch:
                        self._write(pos, length)
                        done += length
                        advance(done)
                    os.fdatasync(self.out)
                    if failure:
                        break
                    if self.verify:
                        pending.put(batch)
                os.fsync(self.out)
        finally:
            if self.verify:
                pending.put(None)
                checker.join()
                os.close(card)
        if failure:
            raise failure[0]

    def reread(self, chunks: list[tuple[int, int]]) -> None:
        """Read `chunks` back from the card once more (its cached pages dropped) and compare them with the image."""
        card = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.posix_fadvise(card, 0, 0, os.POSIX_FADV_DONTNEED)
            _compare(self.source, card, self.path, chunks)
        finally:
            os.close(card)

    def _write(self, pos: int, length: int) -> None:
        data = os.pread(self.source, length, pos)
        if len(data) != length:
            raise UserError(f"the image shrank while being written (at byte {pos})")
        if data == ZEROS[:length]:
            self.zeroer.zero(pos, length)
            self.result.zeroed += length
        else:
            _pwrite_all(self.out, data, pos)
        self.result.written += length

    def _check(self, card: int, pending: queue.Queue, failure: list[BaseException]) -> None:
        try:
            for batch in iter(pending.get, None):
                if not failure:
                    start, end = batch[0][0], batch[-1][0] + batch[-1][1]
                    os.posix_fadvise(card, start, end - start, os.POSIX_FADV_DONTNEED)
                    self.result.verified += _compare(self.source, card, self.path, batch)
        except BaseException as err:  # handed to the writer, which raises it
            failure.append(err)
            for _ in iter(pending.get, None):  # let the writer finish putting
                pass


def _compare(source: int, card: int, path: Path, chunks: list[tuple[int, int]]) -> int:
    """Compare `chunks` of the card with the image; UserError naming the first byte that differs."""
    done = 0
    for pos, length in chunks:
        want, got = os.pread(source, length, pos), os.pread(card, length, pos)
        if want != got:
            raise UserError(f"verification failed: {path} differs from the image at byte "
                            f"{_first_difference(want, got) + pos} (a failing card or reader?): try another card, "
                            "or flash again")
        done += length
    return done


def _first_difference(want: bytes, got: bytes) -> int:
    if len(got) != len(want):
        return min(len(got), len(want))
    return next(i for i, (a, b) in enumerate(zip(want, got)) if a != b)


class Zeroer:
    """Makes a range of the card read as zeros the cheapest way it can: nothing on a file this flash created (it reads
    as zeros), a punched hole in an existing file, BLKZEROOUT on a block device (the card's own write-zeroes or
    discard where it has one; the kernel writes the zeros otherwise), else plain writes of zeros."""

    def __init__(self, out: int, kind: str, new_file: bool):
        self.out, self.kind, self.new_file = out, kind, new_file
        self.works = True

    def zero(self, pos: int, length: int) -> None:
        """Make [pos, pos+length) read as zeros."""
        if self.new_file:
            return
        if self.works:
            try:
                if self.kind == "block":
                    fcntl.ioctl(self.out, BLKZEROOUT, struct.pack("=QQ", pos, length))
                elif _FALLOCATE(self.out, PUNCH_HOLE, pos, length) != 0:
                    raise OSError(ctypes.get_errno(), "fallocate")
                return
            except OSError:
                self.works = False  # this device or filesystem cannot: write the zeros from now on
        _pwrite_all(self.out, ZEROS[:length], pos)


def _pwrite_all(out: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(out, view, pos)
        view, pos = view[n:], pos + n


def _stamp(device: Device, raw: Path, stamp: _Stamp) -> None:
    """Apply the node's plan on the card with the same edit layer builds use (the table read from the image: the
    card's is not written yet), then fsck every filesystem it changed."""
    card = DiskImage(device.path, writable=True, fake_time=stamp.ctx.epoch, partitions_from=raw)
    apply_checked(card, stamp.ctx.plan.ops + [manifest_op(stamp.manifest)])

