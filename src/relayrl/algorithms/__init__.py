"""Training agents shipped with relayrl."""
from .sac import EnsembleCritic, MLPActor, SACAgent, SACConfig

__all__ = ["SACAgent", "SACConfig", "MLPActor", "EnsembleCritic"]
