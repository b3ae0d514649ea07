"""A node's story on the device and at the endpoint: phases on a clock NTP may move, failures and their fix, and
what the endpoint keeps of a story from the network."""

import json

from firstboot.client import NodeStory, split_fix
from firstboot.endpoint.issuer import JoinIssuer
from firstboot.endpoint.kube import ClusterError
from firstboot.endpoint.state import NodeStore, story_fields, story_fix
from firstboot.protocol import PHASES

TOKEN = "abcdef.0123456789abcdef"


class Clock:
    def __init__(self, wall, monotonic):
        self.wall, self.monotonic = wall, monotonic

    def advance(self, seconds, wall_jump=0.0):
        self.wall += seconds + wall_jump
        self.monotonic += seconds


def story(tmp_path, clock, boot_id="boot-1"):
    (tmp_path / "proc/sys/kernel/random").mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc/sys/kernel/random/boot_id").write_text(boot_id + "\n")
    return NodeStory(str(tmp_path / "phases.json"), str(tmp_path), {"arch": "aarch64", "os": "Ubuntu", "generation": 2},
                     wall=lambda: clock.wall, monotonic=lambda: clock.monotonic)


def test_ntp_setting_the_clock_between_two_phases_does_not_make_one_last_months(tmp_path):
    clock = Clock(wall=86400.0, monotonic=5.0)  # a Pi without RTC boots in 1970
    told = story(tmp_path, clock)
    told.reached("booted")
    clock.advance(30, wall_jump=1733000000.0)  # NTP sets the clock meanwhile
    told.reached("local-setup")
    clock.advance(90)
    told.reached("runtime-installed", installed_from="bundle")

    body = told.body()

    phases = body["phases"]
    assert phases["local-setup"] - phases["booted"] == 30 and phases["runtime-installed"] - phases["local-setup"] == 90
    assert body["sent_at"] == clock.wall and body["installed_from"] == "bundle"
    assert (body["arch"], body["os"], body["generation"]) == ("aarch64", "Ubuntu", 2)
    assert oct((tmp_path / "phases.json").stat().st_mode & 0o777) == "0o600"


def test_a_restart_in_the_same_boot_goes_on_with_the_story_and_a_new_boot_starts_another(tmp_path):
    clock = Clock(wall=1733000000.0, monotonic=100.0)
    first = story(tmp_path, clock)
    first.reached("booted")
    assert not first.reached("booted"), "each phase once"
    clock.advance(10)

    again = story(tmp_path, clock)
    rebooted = story(tmp_path, clock, boot_id="boot-2")

    assert list(again.body()["phases"]) == ["booted"] and again.body()["phases"]["booted"] == 1733000000.0
    assert rebooted.body()["phases"] == {}


def test_a_failure_is_split_into_its_problem_and_its_fix():
    assert split_fix("version skew: kubeadm v1.30 but the cluster runs v1.31; rebuild the image with 1.31") == \
        ("version skew: kubeadm v1.30 but the cluster runs v1.31", "rebuild the image with 1.31")
    assert split_fix("the memory cgroup is off (check that cmdline.txt is one line, then reboot)") == \
        ("the memory cgroup is off", "check that cmdline.txt is one line, then reboot")
    assert split_fix("kubeadm join failed: error execution phase preflight") == \
        ("kubeadm join failed: error execution phase preflight", None)


def test_the_endpoint_keeps_only_what_fits_of_a_story_and_moves_it_onto_its_clock():
    told = {"phases": {"booted": 1000.0, "joined": 1100.0, "hacked": 5.0, "token-issued": "soon",
                       "ready": float("nan")},
            "sent_at": 1200.0, "installed_from": "floppy", "node_ip": "192.168.6.15", "arch": "x" * 500,
            "os": ["not", "text"], "generation": True}

    fields = story_fields(told, now=1733000000.0, facts={"macs": ["dc:a6:32:01:02:03"]})

    assert fields["phases"] == {"booted": 1733000000.0 - 200, "joined": 1733000000.0 - 100}
    assert fields["facts"] == {"macs": ["dc:a6:32:01:02:03"], "node_ip": "192.168.6.15", "arch": "x" * 200}
    assert "installed_from" not in fields and "card_generation" not in fields
    assert story_fields("not a story", now=0.0) == {} and set(PHASES) >= set(json.loads(json.dumps(fields["phases"])))


class NodeList:
    """kubectl whose `get nodes -o json` answers with `text` (exit `code`); counts its calls."""

    def __init__(self, text, code=0):
        self.text, self.code, self.calls = text, code, 0

    def run(self, argv, input_text=None, timeout=None):
        from firstboot.commands import CommandResult

        self.calls += 1
        assert argv[3:7] == ["get", "nodes", "-o", "json"] and timeout is not None, "bounded"
        return CommandResult(argv, self.code, self.text, "" if self.code == 0 else "the server is down")


def test_readiness_is_one_bounded_kubectl_call_kept_a_few_seconds_and_longer_when_it_failed():
    from firstboot.endpoint.kube import READINESS_FAILURE_TTL, ClusterAdmin

    now = [0.0]
    nodes = json.dumps({"items": [
        {"metadata": {"name": "pi-master1"}, "status": {"conditions": [
            {"type": "MemoryPressure", "status": "False"},
            {"type": "Ready", "status": "True", "lastTransitionTime": "2024-12-05T10:00:00Z"}]}},
        {"metadata": {"name": "pi-worker1"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}},
        {"metadata": {"name": "pi-worker2"}, "status": {}}]})
    kubectl = NodeList(nodes)
    admin = ClusterAdmin(kubectl, "/etc/kubernetes/admin.conf", readiness_ttl_seconds=5.0, clock=lambda: now[0])

    first, again = admin.node_readiness(), admin.node_readiness()
    now[0] += 6
    admin.node_readiness()

    assert first == again == {"pi-master1": (True, 1733392800.0), "pi-worker1": (False, None),
                              "pi-worker2": (False, None)}
    assert kubectl.calls == 2
    down = NodeList("", code=1)
    admin = ClusterAdmin(down, "/etc/kubernetes/admin.conf", readiness_ttl_seconds=5.0, clock=lambda: now[0])
    assert admin.node_readiness() is None
    now[0] += READINESS_FAILURE_TTL - 1
    assert admin.node_readiness() is None and down.calls == 1, "a down API server is not asked at every status"


class Readiness:
    """The API server as the endpoint asks it: `answer` ({name: (ready, since)}), or None for kubectl failing."""

    def __init__(self, answer):
        self.answer = answer

    def node_readiness(self):
        if self.answer is None:
            raise ClusterError("kubectl get nodes: the server is down")
        return self.answer

    def kubelet_versions(self):
        return dict.fromkeys(self.node_readiness(), "v1.31.4")

    def cluster_version(self, max_age=None):
        return "v1.31.4"


class Inventory:
    path = "/nowhere/tokend.json"  # not a control plane's card: no upgrade record

    def known_nodes(self):
        return frozenset(["pi-worker1"])

    def generation(self, name):
        return 1


def status_rows(tmp_path, admin):
    store = NodeStore(str(tmp_path))
    issuer = JoinIssuer(Inventory(), store, admin, clock=lambda: 200.0)
    return store, lambda: {row["name"]: row for row in issuer.admin_status("127.0.0.1")[1]["nodes"]}


def test_the_ready_phase_stays_while_the_api_server_cannot_say_and_goes_once_it_says_not_ready(tmp_path):
    admin = Readiness({"pi-worker1": (True, 100.0)})
    store, rows = status_rows(tmp_path, admin)
    store.update("pi-worker1", state="joined", phases={"booted": 50.0, "joined": 90.0})

    ready = rows()["pi-worker1"]
    admin.answer = None
    unknown = rows()["pi-worker1"]
    admin.answer = {"pi-worker1": (False, None)}
    not_ready = rows()["pi-worker1"]
    store.close()

    assert (ready["phases"]["ready"], ready["ready"]) == (100.0, True)
    assert (unknown["phases"]["ready"], unknown["ready"]) == (100.0, None), "kubectl failing says nothing"
    assert "ready" not in not_ready["phases"] and not_ready["ready"] is False


def test_a_bootstrap_token_in_a_failure_never_reaches_the_status_row(tmp_path):
    store, rows = status_rows(tmp_path, Readiness({}))
    store.update("pi-worker1", state="failed", last_error="kubeadm init failed: token {} rejected".format(TOKEN),
                 last_report="failed: token {} rejected".format(TOKEN),
                 fix=story_fix({"fix": "run kubeadm token delete {}".format(TOKEN)}))
    store.update("pi-worker2", state="failed", last_error="kubeadm join --token {} failed".format(TOKEN),
                 fix="delete {} then reflash".format(TOKEN))  # as an older endpoint kept them

    answer = json.dumps(rows())
    store.close()

    assert TOKEN not in answer and "kubeadm init failed: token <token> rejected" in answer
    assert "run kubeadm token delete <token>" in answer and "delete <token> then reflash" in answer
    assert "last_report" not in answer, "it only repeats last_error"


def test_the_fix_a_node_tells_is_redacted_on_the_device_too(tmp_path):
    clock = Clock(1000.0, 10.0)
    node = story(tmp_path, clock)
    node.fix = "run kubeadm token delete {}".format(TOKEN)

    assert node.body()["fix"] == "run kubeadm token delete <token>"
