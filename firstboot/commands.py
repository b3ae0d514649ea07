"""The one seam through which firstboot code runs external commands.

kubeadm, kubectl, kubelet (its version only), modprobe, swapoff, apt-get, apt-mark, dpkg, dpkg-query, pacman, ctr,
containerd, journalctl, systemctl and ip are all reached through `CommandRunner.run()`, which looks the tool up on
PATH (tests put recording stand-ins there), logs the command with anything token-shaped redacted, and never raises
for a failing or missing tool: callers decide what a failure means. (release.py downloads with urllib, no tool.)
"""

import logging
import os
import shlex
import shutil
import subprocess

from . import protocol

log = logging.getLogger("pi-image.commands")


class CommandResult(object):
    """Exit code and captured output of one command."""

    def __init__(self, argv, returncode, stdout, stderr):
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    @property
    def ok(self):
        return self.returncode == 0

    def summary(self, limit=600):
        """Last lines of stderr (else stdout) on one line, tokens redacted: fit for a log or a report."""
        text = self.stderr.strip() or self.stdout.strip() or "no output"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        joined = protocol.redact(" | ".join(lines))
        return joined if len(joined) <= limit else "..." + joined[-(limit - 3):]


class CommandRunner(object):
    """Runs commands with a timeout; `env` is the environment they see (PATH decides which tools are found)."""

    def __init__(self, env=None, timeout=300):
        # None: this process's environment, handed down as it is (a dict would be re-encoded on every spawn)
        self.env = None if env is None else dict(env)
        self.timeout = timeout

    def _which(self, tool):
        return shutil.which(tool, path=(os.environ if self.env is None else self.env).get("PATH", os.defpath))

    def available(self, tool):
        """True if `tool` is on this runner's PATH."""
        return self._which(tool) is not None

    def run(self, argv, input_text=None, timeout=None):
        """Run `argv` and return a CommandResult; a missing tool or a timeout is exit 127 / 124, not an exception."""
        printable = protocol.redact(" ".join(shlex.quote(arg) for arg in argv))
        executable = self._which(argv[0])
        if executable is None:
            log.warning("%s: command not found", argv[0])
            return CommandResult(argv, 127, "", "{}: command not found".format(argv[0]))
        log.debug("run: %s", printable)
        feed = {"input": input_text} if input_text is not None else {"stdin": subprocess.DEVNULL}
        try:
            proc = subprocess.run(
                [executable] + list(argv[1:]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
                universal_newlines=True, timeout=timeout or self.timeout, check=False, **feed)
        except subprocess.TimeoutExpired:
            log.warning("timed out: %s", printable)
            return CommandResult(argv, 124, "", "{} timed out".format(argv[0]))
        if proc.returncode != 0:
            log.debug("exit %d: %s", proc.returncode, printable)
        return CommandResult(argv, proc.returncode, proc.stdout, proc.stderr)
