#!/usr/bin/python3
"""System test only: every entry below the directories an enroll file may change, as JSON {path: what it is}: a
file's SHA-256, mode and owner; a symlink's target; a directory's mode and owner. Compared before and after --undo."""

import hashlib
import json
import os
import stat
import sys

TOP = ("/etc", "/usr/lib/pi-image", "/usr/local", "/opt", "/var/lib/pi-image")


def entry(path):
    st = os.lstat(path)
    meta = "{:o} {}:{}".format(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    if stat.S_ISLNK(st.st_mode):
        return "link " + os.readlink(path)
    if stat.S_ISDIR(st.st_mode):
        return "dir " + meta
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as handle:
            return "file {} {}".format(hashlib.sha256(handle.read()).hexdigest(), meta)
    return "other " + meta


def main():
    tree = {}
    for top in TOP:
        for directory, names, files in os.walk(top):
            for name in names + files:
                path = os.path.join(directory, name)
                tree[path] = entry(path)
    json.dump(tree, sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
