"""What the guest's two kubeadm stand-in commands share (system test only): kubeadm's preflight on this node, and the
call that hands the configuration to the test's fake API server on the host.

The preflight checks what the real kubeadm checks before it talks to anyone, with kubeadm's words: the container
runtime answers CRI v1 on the configuration's criSocket (a real gRPC RuntimeService/Version call, as kubeadm and the
kubelet make it), bridged traffic goes through iptables, IPv4 forwarding is on, swap is off; and what the kubelet
would trip over at once: the resolv.conf it will read exists.

The fake API server is reached with a bare HTTP/1.0 request on a socket: urllib and http.client import ssl, which
costs seconds of emulated CPU at every start.
"""

import json
import os
import re
import socket
import struct
import subprocess

RESOLVED_RESOLV_CONF = "/run/systemd/resolve/resolv.conf"  # what kubeadm gives the kubelet where resolved runs
IMAGES_LIST = "/usr/share/kubeadm-standin/images"  # what `kubeadm config images list` prints (the package's)
POD_NETWORK_IMAGES = "/usr/local/lib/pi-image-test/pod-network-images"  # what the applied flannel manifest names
TOKEN = re.compile(r"\b([a-z0-9]{6})\.[a-z0-9]{16}\b")


def knobs():
    """pitest.KEY=VALUE words of the kernel command line."""
    with open("/proc/cmdline") as handle:
        words = handle.read().split()
    return dict(word[len("pitest."):].split("=", 1) for word in words if word.startswith("pitest.") and "=" in word)


def uptime():
    with open("/proc/uptime") as handle:
        return float(handle.read().split()[0])


def console(line):
    """One `PITEST ...` line on the serial console, bootstrap token secrets redacted."""
    try:
        with open("/dev/console", "w") as handle:
            handle.write("PITEST " + TOKEN.sub(r"\1.<secret>", line) + "\n")
    except OSError:
        pass


def kubeadm_version(settings):
    """What `kubeadm version -o short` says: pitest.kubeadm_version=, else the release the stand-in binary carries
    (the release path's copy, apt_repo.release_tree), else the installed package's version."""
    if settings.get("kubeadm_version"):
        return settings["kubeadm_version"]
    for directory in os.environ.get("PATH", "/usr/local/bin:/usr/bin").split(":"):
        try:
            with open(os.path.join(directory, "kubeadm")) as handle:
                carried = re.search(r'^RELEASE="(v[0-9.]+)"$', handle.read(), re.MULTILINE)
        except OSError:
            continue
        if carried:
            return carried.group(1)
        break
    return "v" + subprocess.run(["dpkg-query", "-W", "-f=${Version}", "kubeadm"], stdout=subprocess.PIPE,
                                universal_newlines=True).stdout.split("-")[0]


def _frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name, value):
    """An HPACK header field, literal without indexing, plain strings (all ours are < 127 bytes)."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def _strings(message):
    """{field number: text} of a protobuf message's length-delimited fields (VersionResponse has only strings)."""
    fields, pos = {}, 0
    while pos < len(message):
        key, shift = 0, 0
        while True:
            byte = message[pos]
            pos += 1
            key |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        length = message[pos]  # our strings are short: one-byte lengths
        fields[key >> 3] = message[pos + 1:pos + 1 + length].decode()
        pos += 1 + length
    return fields


def _grpc(socket_path, method, message=b""):
    """One unary gRPC call (HTTP/2 on the Unix socket) of `method` with the protobuf `message`; the response
    message's bytes (the 5-byte gRPC prefix included), b"" for a trailers-only answer."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10)
    conn.connect(socket_path)
    headers = b"".join(_literal(name, value) for name, value in (
        (":method", "POST"), (":scheme", "http"), (":path", method),
        (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers")))
    body = b"\x00" + struct.pack(">I", len(message)) + message  # uncompressed
    conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0) + _frame(1, 0x4, 1, headers)
                 + _frame(0, 0x1, 1, body))
    data, buffer = b"", b""
    while True:
        while len(buffer) < 9 or len(buffer) < 9 + int.from_bytes(buffer[:3], "big"):
            chunk = conn.recv(65536)
            if not chunk:
                raise OSError("the runtime closed the connection")
            buffer += chunk
        length, kind, flags = int.from_bytes(buffer[:3], "big"), buffer[3], buffer[4]
        payload, buffer = buffer[9:9 + length], buffer[9 + length:]
        if kind == 4 and not flags & 0x1:
            conn.sendall(_frame(4, 0x1, 0))  # SETTINGS ack
        elif kind == 6 and not flags & 0x1:
            conn.sendall(_frame(6, 0x1, 0, payload))  # PING ack
        elif kind in (3, 7):
            raise OSError("the runtime reset the stream (HTTP/2 frame type {})".format(kind))
        elif kind == 0:
            data += payload
        if kind in (0, 1) and flags & 0x1:  # END_STREAM: the trailers (or a trailers-only error) came
            break
    conn.close()
    return data


def cri_version(socket_path):
    """RuntimeService/Version over gRPC: {runtime_name, runtime_version, runtime_api_version}."""
    data = _grpc(socket_path, "/runtime.v1.RuntimeService/Version")
    if len(data) < 5:
        raise OSError("CRI v1 runtime API is not implemented for endpoint unix://{}".format(socket_path))
    fields = _strings(data[5:])
    return {name: fields.get(number, "") for number, name in
            ((2, "runtime_name"), (3, "runtime_version"), (4, "runtime_api_version"))}


def _length_delimited(number, payload):
    """A protobuf field `number` of wire type 2 (our payloads are < 128 bytes: a one-byte length)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def image_present(socket_path, reference):
    """ImageService/ImageStatus over gRPC, as the kubelet and kubeadm ask: an image the runtime has comes back as
    field 1 (Image) of the response; an unknown one as an empty response."""
    request = _length_delimited(1, _length_delimited(1, reference.encode()))  # ImageStatusRequest{ImageSpec{image}}
    data = _grpc(socket_path, "/runtime.v1.ImageService/ImageStatus", request)
    return len(data) > 5 and data[5] == (1 << 3 | 2)


def images_needed(command):
    """What this node cannot start without when no registry is reachable (pitest.require_images=1): for init,
    every image of `kubeadm config images list` (the kubeadm stand-in package's list) and the pod network's; for a
    worker's join, the images its kubelet starts at once: the sandbox (pause), kube-proxy and the pod network's."""
    kubeadm_list, pod_network = _listed(IMAGES_LIST), _listed(POD_NETWORK_IMAGES)
    if command == "init":
        return kubeadm_list + pod_network
    return [image for image in kubeadm_list if "/kube-proxy:" in image or "/pause:" in image] + pod_network


def _listed(path):
    """The image references of a list file, one a line (# comments)."""
    with open(path) as handle:
        return [line.strip() for line in handle if line.strip() and not line.startswith("#")]


def image_errors(cri, command):
    """kubeadm's preflight with imagePullPolicy IfNotPresent and no registry in reach: an image the runtime lacks
    would be pulled, and the pull fails."""
    errors = []
    for image in images_needed(command):
        try:
            if not image_present(cri, image):
                errors.append("[ERROR ImagePull]: failed to pull image {}: dial tcp: lookup {}: no such host "
                              "(this guest reaches no registry)".format(image, image.split("/")[0]))
        except OSError as err:
            errors.append("[ERROR ImagePull]: cannot ask the runtime for image {}: {}".format(image, err))
    return errors


def node_errors(config, command="join"):
    """kubeadm's fatal preflight errors for this node (join and init alike), as kubeadm words them."""
    errors = []
    cri = re.search(r'criSocket: "unix://([^"]+)"', config).group(1)
    try:
        version = cri_version(cri)
        if version["runtime_api_version"] != "v1":
            errors.append("[ERROR CRI]: the runtime speaks CRI {}, not v1".format(version["runtime_api_version"]))
    except OSError as err:
        errors.append("[ERROR CRI]: container runtime is not running: validate service connection: {}".format(err))
    for path in ("/proc/sys/net/bridge/bridge-nf-call-iptables", "/proc/sys/net/ipv4/ip_forward"):
        check = "FileContent-" + path.replace("/", "-")
        try:
            with open(path) as handle:
                if handle.read().strip() != "1":
                    errors.append("[ERROR {}]: {} contents are not set to 1".format(check, path))
        except OSError:
            errors.append("[ERROR {}]: {} does not exist".format(check, path))
    with open("/proc/swaps") as handle:
        if len(handle.read().strip().splitlines()) > 1:
            errors.append("[ERROR Swap]: running with swap on is not supported. Please disable swap")
    if knobs().get("require_images") == "1":
        if "imagePullPolicy: \"IfNotPresent\"" not in config:
            errors.append("nodeRegistration.imagePullPolicy is not IfNotPresent: kubeadm would pull every image")
        errors += image_errors(cri, command)
    try:
        resolv_conf = kubelet_resolv_conf(config)
    except OSError as err:
        errors.append("could not list patch files for path {!r}: {}".format(err.filename, err.strerror))
    else:
        if not os.path.exists(resolv_conf):
            errors.append("[kubelet] resolvConf {} does not exist: pods would get no DNS".format(resolv_conf))
    return errors


def kubelet_resolv_conf(config):
    """The resolv.conf the kubelet will read: the configuration's patch, else what a resolved node gives (OSError
    when the patch it names is not there)."""
    patches = re.search(r'directory: "([^"]+)"', config)
    if patches:
        path = os.path.join(patches.group(1), "kubeletconfiguration+strategic.yaml")
        with open(path) as handle:
            found = re.search(r'resolvConf: "([^"]+)"', handle.read())  # the patch may size the kubelet only
        if found:
            return found.group(1)
    return RESOLVED_RESOLV_CONF


def preflight_failed(command, errors, write_stderr):
    """kubeadm's preflight failure: its message on stderr, a line on the console; exit code 1."""
    write_stderr("error execution phase preflight: [preflight] Some fatal errors occurred:\n\t"
                 + "\n\t".join(errors) + "\n")
    console("{} preflight failed: {}".format(command, "; ".join(errors)))
    return 1


def post_json(address, path, body, timeout=120):
    """POST `body` as JSON to http://ADDRESS/PATH; the decoded JSON answer (OSError when it is not a 200)."""
    host, port = address.rsplit(":", 1)
    data = json.dumps(body).encode()
    head = "POST {} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n".format(
        path, address, len(data))
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        conn.sendall(head.encode() + data)
        chunks = []
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    status, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    if status.split(b" ", 2)[1:2] != [b"200"]:
        raise OSError("the fake API server answered {!r}".format(status.split(b"\r\n", 1)[0].decode(errors="replace")))
    return json.loads(payload.decode())
