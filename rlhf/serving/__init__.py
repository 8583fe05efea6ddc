"""Scoring served by one Ray actor for every env runner: batcher (requests into batches) -> actor (the
models, placement) -> client (starting it, and the reward env runners call through it)."""

from rlhf.serving.actor import ScoringService, ScoringServiceError, clip_boxes, placement, service_name
from rlhf.serving.client import ServiceReward, ensure_service, release_service

__all__ = ["ScoringService", "ScoringServiceError", "ServiceReward", "clip_boxes", "ensure_service",
           "placement", "release_service", "service_name"]
