"""What the machine and the process offer a run: usable cores (affinity, cgroup quota), memory
(cgroup-aware), the torchrun environment (rank, world size), and the signals that ask a run to
stop (StopRequest). No torch, no Hydra: cheap to import before a config error is answered."""
