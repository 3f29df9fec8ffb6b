"""The metric table: every metric's name, direction, interval and role, in one place.

Metric names are read by several parts that must agree -- the metric engine forms them, the
results file records their directions, ``bench eval`` prints some of them, stress suites pick one
as their headline, the leaderboard ranks by one and shows a few as columns. Each of those reads
this table instead of spelling names or matching prefixes and substrings of its own, so adding a
metric is one row here plus its computation in :mod:`dolos_bench.eval.metrics`.

A name says its choices: the threshold (``@0.5``, ``@best``), the averaging
(``mean-of-images`` or ``pooled``) and the images it is computed on (``fakes``, ``reals``,
``all``). ``{t}`` in a template is the protocol's threshold, written as ``f"{t:g}"``.

This module is a leaf (it imports nothing of dolos_bench), so that the results schema, which
every reader uses, can read it too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

__all__ = [
    "Interval",
    "MetricSpec",
    "METRICS",
    "PROTOCOL_METRICS",
    "PRIMARY",
    "format_threshold",
    "spec",
    "spec_for",
    "metric_name",
    "metric_names",
    "primary_metric",
    "higher_is_better",
    "direction",
]

Interval = Literal["bootstrap", "stratified-bootstrap", "repeats-2std", "none"]
"""How a metric's uncertainty is reported.

``bootstrap``: percentile 95% interval from resampling the per-image values (``ci95``);
``stratified-bootstrap``: the same from resampling reals and fakes separately (image AUC/AP);
``repeats-2std``: mean ± 2 std over the protocol's repeated draws (the Dolos detection AP);
``none``: no interval (pooled pixel metrics: resampling would need a histogram per image).
"""

THRESHOLD = "{t}"


@dataclass(frozen=True)
class MetricSpec:
    """One metric (a family over thresholds when its template holds ``{t}``).

    ``headline``: a default column of the leaderboard, the numbers runs are compared by.
    ``summary``: printed by ``bench eval`` after a run.
    ``protocol``: ``None`` for the metrics every protocol computes (``results.metrics``, the
    breakdowns, the stress grid); a protocol's name for the numbers only that protocol adds,
    which the results keep under ``info[<protocol>]``.
    """

    template: str
    higher_is_better: bool = True
    interval: Interval = "none"
    headline: bool = False
    summary: bool = False
    protocol: str | None = None

    def name(self, threshold: float | None = None) -> str:
        """The metric's name at ``threshold`` (needed only when the template holds ``{t}``)."""
        if THRESHOLD not in self.template:
            return self.template
        if threshold is None:
            raise ValueError(f"metric {self.template!r} needs a threshold")
        return self.template.replace(THRESHOLD, format_threshold(threshold))

    @property
    def direction(self) -> Literal["higher", "lower"]:
        """``"higher"`` or ``"lower"``: which values are better, as the results file records it."""
        return "higher" if self.higher_is_better else "lower"

    def matches(self, name: str) -> bool:
        """Whether ``name`` is this metric at some threshold."""
        return _pattern(self.template).fullmatch(name) is not None


def format_threshold(threshold: float) -> str:
    """A threshold as metric names write it: ``0.5``, ``0.25``, ``1``."""
    return f"{threshold:g}"


@lru_cache(maxsize=None)
def _pattern(template: str) -> re.Pattern[str]:
    head, sep, tail = template.partition(THRESHOLD)
    if not sep:
        return re.compile(re.escape(template))
    return re.compile(re.escape(head) + r"[0-9][0-9.e+-]*" + re.escape(tail))


def _pixel_ratio(stat: str, averaging: str, *, headline: bool = False, summary: bool = False) -> MetricSpec:
    """A threshold metric of the fakes' pixels; only the per-image mean has an interval."""
    interval: Interval = "bootstrap" if averaging == "mean-of-images" else "none"
    return MetricSpec(f"pixel/{stat}@{{t}}/{averaging}/fakes", interval=interval, headline=headline, summary=summary)


METRICS: tuple[MetricSpec, ...] = (
    # Threshold metrics of the fake images' pixels, averaged per image, then pooled over all pixels.
    _pixel_ratio("iou", "mean-of-images", headline=True, summary=True),
    _pixel_ratio("f1", "mean-of-images", headline=True, summary=True),
    _pixel_ratio("precision", "mean-of-images"),
    _pixel_ratio("recall", "mean-of-images"),
    _pixel_ratio("mcc", "mean-of-images"),
    _pixel_ratio("iou", "pooled", summary=True),
    _pixel_ratio("f1", "pooled"),
    _pixel_ratio("precision", "pooled"),
    _pixel_ratio("recall", "pooled"),
    _pixel_ratio("mcc", "pooled"),
    MetricSpec("pixel/f1@best/mean-of-images/fakes", interval="bootstrap"),
    # Threshold-free pixel metrics: pooled over every pixel (of all images, or of the fakes only) ...
    MetricSpec("pixel/auc/pooled/all", headline=True, summary=True),
    MetricSpec("pixel/ap/pooled/all"),
    MetricSpec("pixel/auc/pooled/fakes"),
    MetricSpec("pixel/ap/pooled/fakes"),
    # ... and per fake image, averaged.
    MetricSpec("pixel/auc/mean-of-images/fakes", interval="bootstrap"),
    MetricSpec("pixel/ap/mean-of-images/fakes", interval="bootstrap"),
    # Share of each real image's pixels flagged forged: the false alarms.
    MetricSpec("pixel/fp-area@{t}/mean-of-images/reals", higher_is_better=False, interval="bootstrap"),
    # Image level: is the image fake?
    MetricSpec("image/auc/all", interval="stratified-bootstrap", headline=True, summary=True),
    MetricSpec("image/ap/all", interval="stratified-bootstrap", headline=True, summary=True),
    MetricSpec("image/accuracy@{t}/all"),
    MetricSpec("image/balanced-accuracy@{t}/all"),
    MetricSpec("image/tpr@fpr0.05/all"),
)
"""Every metric of every protocol, in the order the engine computes (and results list) them."""

PROTOCOL_METRICS: tuple[MetricSpec, ...] = (
    # The Dolos paper's two numbers (see dolos_bench.eval.protocols), x100 as the paper prints them.
    MetricSpec("dolos/localization/iou@{t}x100", protocol="dolos", summary=True),
    MetricSpec("dolos/detection/ap", interval="repeats-2std", protocol="dolos", summary=True),
)
"""Numbers only one protocol adds, kept in the results' ``info[<protocol>]``."""

PRIMARY = "pixel/iou@{t}/mean-of-images/fakes"
"""The template of the default ranking metric and stress headline."""

_BY_TEMPLATE = {s.template: s for s in METRICS + PROTOCOL_METRICS}
assert len(_BY_TEMPLATE) == len(METRICS) + len(PROTOCOL_METRICS), "a template appears twice in the table"
assert PRIMARY in _BY_TEMPLATE and _BY_TEMPLATE[PRIMARY].higher_is_better


def spec(template: str) -> MetricSpec:
    """The row of ``template``; a KeyError for a template the table does not have."""
    try:
        return _BY_TEMPLATE[template]
    except KeyError:
        raise KeyError(f"no metric spec with template {template!r}") from None


def spec_for(name: str) -> MetricSpec | None:
    """The row whose template ``name`` instantiates, ``None`` for a name the table does not know."""
    found = _BY_TEMPLATE.get(name)
    if found is not None:
        return found
    return next((s for s in _BY_TEMPLATE.values() if s.matches(name)), None)


def metric_name(template: str, threshold: float | None = None) -> str:
    """The name of the table's metric ``template`` at ``threshold`` (the table is checked)."""
    return spec(template).name(threshold)


def metric_names(
    threshold: float = 0.5, *, headline: bool | None = None, summary: bool | None = None,
    protocol: str | None = None,
) -> list[str]:
    """The names every protocol computes at ``threshold``, in computing order.

    ``headline``/``summary`` keep only the rows whose flag has that value; ``protocol`` adds
    that protocol's own numbers after them.
    """
    rows = [*METRICS, *(s for s in PROTOCOL_METRICS if protocol is not None and s.protocol == protocol)]
    return [
        s.name(threshold) for s in rows
        if (headline is None or s.headline == headline) and (summary is None or s.summary == summary)
    ]


def primary_metric(threshold: float = 0.5) -> str:
    """The default ranking metric at ``threshold``."""
    return metric_name(PRIMARY, threshold)


def higher_is_better(name: str) -> bool | None:
    """The table's direction for the metric ``name``; ``None`` when the table does not know it."""
    found = spec_for(name)
    return None if found is None else found.higher_is_better


def direction(name: str) -> Literal["higher", "lower"] | None:
    """``higher_is_better`` as the results file writes it; ``None`` for an unknown name."""
    found = spec_for(name)
    return None if found is None else found.direction
