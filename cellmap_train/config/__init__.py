"""Building a run from its config: where conf/ lives and its resolvers, the shorthand checks, the
preflight checks, Hydra's errors as one line, and objects built from config groups (the only
place besides the entry points and run/ that imports Hydra)."""
