#!/usr/bin/python3
"""Hold dpkg's and apt's locks for pitest.package_locks= seconds (system test only; see its unit).

The same locks apt and dpkg take (fcntl write locks on these files), so a real apt-get or dpkg in the agent meets
a real "Could not get lock ... It is held by process N (python3)". Tells systemd it is ready once it holds them.
"""

import fcntl
import os
import socket
import time

LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock")


def seconds():
    with open("/proc/cmdline") as handle:
        for word in handle.read().split():
            if word.startswith("pitest.package_locks="):
                return float(word.split("=", 1)[1])
    return 0.0


def notify_ready():
    address = os.environ["NOTIFY_SOCKET"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", "\0" + address[1:] if address.startswith("@") else address)


def main():
    held = []
    for path in LOCKS:
        handle = open(path, "a")
        fcntl.lockf(handle, fcntl.LOCK_EX)
        held.append(handle)
    duration = seconds()
    with open("/dev/console", "w") as console:
        console.write("PITEST package locks held for {:.0f} s\n".format(duration))
    notify_ready()
    time.sleep(duration)
    with open("/dev/console", "w") as console:
        console.write("PITEST package locks released\n")


if __name__ == "__main__":
    main()
