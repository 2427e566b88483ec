"""An SSH-served Slurm 22.05 emulator: sites with nodes, partitions, real job processes and
injectable faults. It shares no code with the operator's Slurm client, so contract tests against
real Slurm keep both honest."""

from bbp_notebooks.mockslurm.config import MockSlurmConfig, SiteConfig, load_config
from bbp_notebooks.mockslurm.site import MockSite

__all__ = ["MockSite", "MockSlurmConfig", "SiteConfig", "load_config"]
