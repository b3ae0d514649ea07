"""The master's token endpoint: short-lived kubeadm bootstrap tokens for nodes that authenticate.

Master-only: a worker's image carries the device agent (the modules at the top of `firstboot/`) and not this
sub-package. Like the agent it uses the standard library only and runs on Python 3.6. From the package's parent:

    cd /usr/lib/pi-image && python3 -m firstboot.endpoint --config /etc/pi-image/cluster/tokend.json

(or `pi-image token-server --cluster DIR` where pi-image is installed).

    tokend.py     the HTTPS server: admission at accept, TLS, deadlines; the entry point
    handler.py    the HTTP requests: capped heads, authentication
    issuer.py     what an authenticated node gets: a token, a wait, or a refusal and why
    guards.py     connection slots, nonces, rate limits, the connection watchdog
    audit.py      the audit log: rotated, floods summarised
    kube.py       kubectl on the master: nodes, bootstrap-token Secrets
    state.py      the SQLite state shared with `pi-image approve` and `pi-image status`
    kubestore.py  the same state in the Kubernetes API, where several masters serve joins (one ConfigMap per node)
    objects.py    kube-system objects through kubectl, written with resourceVersion compare-and-swap
    leases.py     a per-node Lease: one master at a time decides a node's join or report
    controlplanes.py  what a joining control plane gets: the certificate key (kubeadm-certs uploaded again), no
                  stale etcd member
    upgrades.py   /v1/admin/upgrade: this card's move to the next minor, decided and recorded (its unit does it)
    settings.py   tokend.json
    discovery.py  kubeadm's CA cert hash
"""
