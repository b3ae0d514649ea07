"""Recording stand-ins for kubeadm/kubectl & co, and the harness that runs the real endpoint and agents with them."""
