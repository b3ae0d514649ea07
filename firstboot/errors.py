"""What can stop the device agent's local setup (shared by the modules that prepare the node)."""


class SetupFailed(Exception):
    """Local setup cannot finish; `retry` says whether trying again later can help (network, clock, a lock) or not
    (the kernel). The message is one line fit for the log and for the endpoint's `pi-image status`."""

    def __init__(self, message, retry):
        Exception.__init__(self, message)
        self.retry = retry
