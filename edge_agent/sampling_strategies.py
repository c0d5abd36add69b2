"""Active learning's sampling strategies, with Roboflow's names and semantics, as the configuration
declares them (``[[active_learning.strategies]]`` tables, validated with the settings): their fields,
their ``limits``, and where each applies (``applies``). Whether a strategy wants a result is decided by
the sampler (``active_learning.sampling.wants``).

Strategies (``type``): ``random`` (``traffic_percentage``), ``close_to_threshold`` (``threshold``,
``epsilon``, ``probability``, ``minimum_objects_close_to_threshold``, ``only_top_classes``,
``selected_class_names``), ``classes_based`` (classification: the predicted class is one of
``selected_class_names``), ``detections_number_based`` (``more_than`` / ``less_than`` detections of
``selected_class_names``). Each may carry ``limits`` (``minutely``, ``hourly``, ``daily``) whose counts
the sampler keeps in the spool's database, so a restart does not reset them; ``sources`` and ``models``
narrow where a strategy applies.

The declarations sit with the settings, below active learning, so that the settings validate them
without importing the sampler (nor numpy).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


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


class RandomStrategy(_Strategy):
    type: Literal["random"] = "random"
    traffic_percentage: float = Field(ge=0, le=1)


class CloseToThresholdStrategy(_Strategy):
    type: Literal["close_to_threshold"] = "close_to_threshold"
    threshold: float = Field(ge=0, le=1)
    epsilon: float = Field(ge=0, le=1)
    probability: float = Field(1.0, ge=0, le=1)
    minimum_objects_close_to_threshold: int = Field(1, ge=1)
    only_top_classes: bool = True
    selected_class_names: tuple[str, ...] | None = None


class ClassesBasedStrategy(_Strategy):
    """Classification results whose predicted class (or, multi-label, any predicted class) is selected."""

    type: Literal["classes_based"] = "classes_based"
    selected_class_names: tuple[str, ...] = Field(min_length=1)
    probability: float = Field(1.0, ge=0, le=1)


class DetectionsNumberBasedStrategy(_Strategy):
    type: Literal["detections_number_based"] = "detections_number_based"
    more_than: int | None = Field(None, ge=0)
    less_than: int | None = Field(None, ge=0)
    selected_class_names: tuple[str, ...] | None = None
    probability: float = Field(1.0, ge=0, le=1)


Strategy = Annotated[RandomStrategy | CloseToThresholdStrategy | ClassesBasedStrategy | DetectionsNumberBasedStrategy,
                     Field(discriminator="type")]
