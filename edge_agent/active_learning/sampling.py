"""Sampling strategies with Roboflow's names and semantics, their limits, and near-duplicate skipping.

Strategies (``type``): ``random`` (``traffic_percentage``), ``close_to_threshold`` (``threshold``,
``epsilon``, ``probability``, ``minimum_objects_close_to_threshold``, ``only_top_classes``,
``selected_class_names``), ``classes_based`` (classification: the predicted class is one of
``selected_class_names``), ``detections_number_based`` (``more_than`` / ``less_than`` detections of
``selected_class_names``). Each may carry ``limits`` (``minutely``, ``hourly``, ``daily``) whose counts
live in the spool's database, so a restart does not reset them; ``sources`` and ``models`` narrow where
a strategy applies.
"""

from __future__ import annotations

import random
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.results import Classification, Detections, Result


class Limit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["minutely", "hourly", "daily"]
    value: int = Field(ge=0)


class _Strategy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    limits: tuple[Limit, ...] = ()
    sources: tuple[str, ...] = Field((), description="only these sources (empty: all)")
    models: tuple[str, ...] = Field((), description="only these models (empty: all)")
    tags: tuple[str, ...] = ()

    def applies(self, source_id: str, model_id: str) -> bool:
        return (not self.sources or source_id in self.sources) and (not self.models or model_id in self.models)

    def wants(self, result: Result, rng: random.Random) -> bool:  # pragma: no cover - each type has its own
        raise NotImplementedError


def _names(result: Detections, selected: tuple[str, ...] | None) -> np.ndarray:
    names = np.asarray(result.class_names, dtype=object)[result.class_id] if len(result) else np.array([], object)
    return names if not selected else names[np.isin(names, list(selected))]


class RandomStrategy(_Strategy):
    type: Literal["random"] = "random"
    traffic_percentage: float = Field(ge=0, le=1)

    def wants(self, result: Result, rng: random.Random) -> bool:
        return rng.random() < self.traffic_percentage


class CloseToThresholdStrategy(_Strategy):
    type: Literal["close_to_threshold"] = "close_to_threshold"
    threshold: float = Field(ge=0, le=1)
    epsilon: float = Field(ge=0, le=1)
    probability: float = Field(1.0, ge=0, le=1)
    minimum_objects_close_to_threshold: int = Field(1, ge=1)
    only_top_classes: bool = True
    selected_class_names: tuple[str, ...] | None = None

    def wants(self, result: Result, rng: random.Random) -> bool:
        low, high = self.threshold - self.epsilon, self.threshold + self.epsilon
        if isinstance(result, Classification):
            names = np.asarray(result.class_names, dtype=object)
            scores = result.confidence
            if self.only_top_classes and not result.multilabel:
                top, _ = result.top
                names, scores = names[top:top + 1], scores[top:top + 1]
            if self.selected_class_names:
                keep = np.isin(names, list(self.selected_class_names))
                names, scores = names[keep], scores[keep]
            close = int(((scores >= low) & (scores <= high)).sum())
        else:
            scores = result.confidence
            if self.selected_class_names and len(result):
                scores = scores[np.isin(_names(result, None), list(self.selected_class_names))]
            close = int(((scores >= low) & (scores <= high)).sum())
        return close >= self.minimum_objects_close_to_threshold and rng.random() < self.probability


class ClassesBasedStrategy(_Strategy):
    """Classification results whose predicted class (or, multi-label, any predicted class) is selected."""

    type: Literal["classes_based"] = "classes_based"
    selected_class_names: tuple[str, ...] = Field(min_length=1)
    probability: float = Field(1.0, ge=0, le=1)

    def wants(self, result: Result, rng: random.Random) -> bool:
        if not isinstance(result, Classification):
            return False
        if result.multilabel:
            predicted = {n for n, c in zip(result.class_names, result.confidence) if c > result.threshold}
        else:
            predicted = {result.class_names[result.top[0]]}
        return bool(predicted & set(self.selected_class_names)) and rng.random() < self.probability


class DetectionsNumberBasedStrategy(_Strategy):
    type: Literal["detections_number_based"] = "detections_number_based"
    more_than: int | None = Field(None, ge=0)
    less_than: int | None = Field(None, ge=0)
    selected_class_names: tuple[str, ...] | None = None
    probability: float = Field(1.0, ge=0, le=1)

    def wants(self, result: Result, rng: random.Random) -> bool:
        if not isinstance(result, Detections):
            return False
        n = len(_names(result, self.selected_class_names))
        if self.more_than is not None and n <= self.more_than:
            return False
        if self.less_than is not None and n >= self.less_than:
            return False
        return rng.random() < self.probability


Strategy = Annotated[RandomStrategy | CloseToThresholdStrategy | ClassesBasedStrategy | DetectionsNumberBasedStrategy,
                     Field(discriminator="type")]

WINDOWS = {"minutely": "%Y-%m-%dT%H:%M", "hourly": "%Y-%m-%dT%H", "daily": "%Y-%m-%d"}


def dhash(image: np.ndarray) -> int:
    """A 64-bit difference hash: grey 9x8 thumbnail, one bit per horizontal neighbour comparison."""
    import cv2

    small = cv2.resize(image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (9, 8),
                       interpolation=cv2.INTER_AREA)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
