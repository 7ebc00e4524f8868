"""Networks: activation/normalisation factories, the conv64 encoder and the actor-critic."""

from plasticity_lab.nets.actor_critic import ActorCritic, build_model

__all__ = ["ActorCritic", "build_model"]
