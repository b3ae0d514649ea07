#!/usr/bin/python3
"""`kubeadm join --config FILE` in the booted guest (system test only; the kubeadm stand-in recorded the call).

First what the real kubeadm checks on the node before it talks to anyone (its preflight): the container runtime
answers CRI v1 on the JoinConfiguration's criSocket (a real gRPC RuntimeService/Version call, as kubeadm and the
kubelet make it), bridged traffic goes through iptables, IPv4 forwarding is on, swap is off. Then what the kubelet
would trip over at once: the resolv.conf it will read exists. Any failure ends the join with kubeadm's message.

There is no control plane to join, so the JoinConfiguration then goes to the test's fake API server on the host, at
the apiServerEndpoint the token endpoint handed out. It runs the join tests' kubeadm stand-in against their fake
cluster: the token must still be live there (else kubeadm's JWS message), the CA hash right, and the node becomes
Ready there. The exit code and output are kubeadm's, as the agent would see them.

    pitest.join_sleep=SECONDS   (kernel command line) the join takes this long before it reaches the API server
"""

import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

RESOLVED_RESOLV_CONF = "/run/systemd/resolve/resolv.conf"  # what kubeadm gives the kubelet where resolved runs


def knobs():
    with open("/proc/cmdline") as handle:
        words = handle.read().split()
    return dict(word[len("pitest."):].split("=", 1) for word in words if word.startswith("pitest.") and "=" in word)


def console(line):
    try:
        with open("/dev/console", "w") as handle:
            handle.write("PITEST " + line + "\n")
    except OSError:
        pass


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


def cri_version(socket_path):
    """RuntimeService/Version over gRPC (HTTP/2 on the Unix socket): {runtime_name, runtime_api_version, ...}."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10)
    conn.connect(socket_path)
    headers = b"".join(_literal(name, value) for name, value in (
        (":method", "POST"), (":scheme", "http"), (":path", "/runtime.v1.RuntimeService/Version"),
        (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers")))
    conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0) + _frame(1, 0x4, 1, headers)
                 + _frame(0, 0x1, 1, b"\x00\x00\x00\x00\x00"))  # an empty VersionRequest, uncompressed
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
    if len(data) < 5:
        raise OSError("CRI v1 runtime API is not implemented for endpoint unix://{}".format(socket_path))
    fields = _strings(data[5:])
    return {name: fields.get(number, "") for number, name in
            ((2, "runtime_name"), (3, "runtime_version"), (4, "runtime_api_version"))}


def preflight(config):
    """kubeadm's fatal preflight errors for this node, as kubeadm words them."""
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
    return errors


def kubelet_resolv_conf(config):
    """The resolv.conf the kubelet will read: the JoinConfiguration's patch, else what a resolved master gives."""
    patches = re.search(r'directory: "([^"]+)"', config)
    if patches:
        path = os.path.join(patches.group(1), "kubeletconfiguration+strategic.yaml")
        with open(path) as handle:
            return re.search(r'resolvConf: "([^"]+)"', handle.read()).group(1)
    return RESOLVED_RESOLV_CONF


def main(argv):
    settings = knobs()
    with open(argv[argv.index("--config") + 1]) as handle:
        config = handle.read()
    errors = preflight(config)
    resolv_conf = kubelet_resolv_conf(config)
    if not os.path.exists(resolv_conf):
        errors.append("[kubelet] resolvConf {} does not exist: pods would get no DNS".format(resolv_conf))
    if errors:
        sys.stderr.write("error execution phase preflight: [preflight] Some fatal errors occurred:\n\t"
                         + "\n\t".join(errors) + "\n")
        console("kubeadm-join preflight failed: " + "; ".join(errors))
        return 1
    time.sleep(float(settings.get("join_sleep", "0")))
    endpoint = re.search(r'apiServerEndpoint: "([^"]+)"', config).group(1)
    version = settings.get("kubeadm_version") or "v" + subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "kubeadm"], stdout=subprocess.PIPE,
        universal_newlines=True).stdout.split("-")[0]
    body = json.dumps({"config": config, "kubeadm_version": version}).encode()
    request = urllib.request.Request("http://{}/pi-image-test/kubeadm-join".format(endpoint), data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read().decode())
    except (OSError, urllib.error.URLError) as err:
        sys.stderr.write("error execution phase preflight: cannot reach the API server {}: {}\n".format(endpoint, err))
        return 1
    sys.stdout.write(answer["stdout"])
    sys.stderr.write(answer["stderr"])
    console("kubeadm-join exit {}: {}".format(answer["returncode"], (answer["stderr"] or answer["stdout"]).strip()))
    return answer["returncode"]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
