"""Reading a Prometheus text exposition in tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["unlabelled_samples", "labelled_samples", "sample_value"]


def unlabelled_samples(text: str) -> dict[str, float]:
    """The samples without labels, by name (labelled lines are left out)."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            samples[name] = float(value)
    return samples


def labelled_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample as ``{(name, frozenset(labels.items())): value}``, read by prometheus-client's parser."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def sample_value(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """The value of ``name`` with exactly ``labels`` in :func:`labelled_samples`' result; 0 when absent."""
    return samples.get((name, frozenset(labels.items())), 0.0)
