"""The nono-shell supervisor: policy, per-command sandboxes, the socket server and the agent launcher."""
