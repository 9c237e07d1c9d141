"""CUBE (Cui et al., NeurIPS 2022): cluster the training set in the backdoored model's feature space, drop the
outlier clusters, retrain on the rest.

1. Embed every suspect training row with a model trained on the poisoned set: the last layer's [CLS] hidden
   state. CUBE trains such an encoder itself; the victim is one (same data, same recipe), so it is reused.
   Poisoned rows share the trigger and so land together, apart from the genuine rows of the label they carry.
2. Reduce the dimension and cluster all rows at once with HDBSCAN. OpenBackdoor's CUBE reduces with PCA (20)
   then UMAP (2 dimensions); this port uses PCA alone (`components` dimensions of standardised features),
   because umap-learn drags in numba. HDBSCAN is scikit-learn's (`sklearn.cluster.HDBSCAN`); its noise points
   form one more group.
3. Per given label, as in CUBE's reference filtering: keep the largest cluster among that label's rows, and drop
   every other cluster of that label holding fewer than half of the label's rows.
4. Retrain a fresh model from the backbone (the victim's own `VictimConfig`: same model, epochs, learning rate)
   on the kept rows. `flagged` are the dropped rows (detection precision/recall in the reports).

Uses the suspect set only (no clean rows).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import DataError
from ..options import option
from ._common import cls_embeddings, drop_and_retrain, retrain_recipe
from .base import DefenderData, DefenseConfig, DefenseResult


@dataclass(frozen=True)
class CUBEConfig(DefenseConfig):
    components: int = option(10, "PCA dimensions before clustering (CUBE's UMAP uses 10).")
    min_cluster_size: int = option(0, "HDBSCAN's min_cluster_size; 0 = 2% of the suspect rows (at least 10).")
    min_samples: int = option(
        0,
        "HDBSCAN's min_samples; 0 = min(100, 5% of the suspect rows) (CUBE's reference uses 100).")
    drop_share: float = option(
        0.5,
        "Drop a non-largest cluster of a label only if it holds fewer than this share of the label's "
        "rows.")
    retrain: bool = option(True, "retrain a fresh model on the kept rows (true/false)")
    retrain_epochs: int | None = option(None, "None = the victim's own epochs.")
    backbone: str | None = option(None, "None = the victim's backbone (its `VictimConfig.model`).")
    max_length: int = option(128, "max tokens per input")
    seed: int = option(0, "random seed of the defense's own sampling and training")


PRESETS = {"full": {}, "quick": {}}
"""At quick scale the suspect set is the quick train split (2,000 rows), so the presets coincide."""


def check(data: DefenderData, config: CUBEConfig) -> None:
    if len(data.suspect) < 20:
        raise DataError(f"defense 'cube' clusters the suspect training set: it needs at least 20 rows, got {len(data.suspect)}")
    try:
        from sklearn.cluster import HDBSCAN  # noqa: F401
    except ImportError:
        raise DataError("defense 'cube' needs scikit-learn >= 1.3 (sklearn.cluster.HDBSCAN): "
                        "pip install scikit-learn") from None


def cluster(features: np.ndarray, *, config: CUBEConfig) -> np.ndarray:
    """HDBSCAN cluster ids (−1 = noise) of standardised, PCA-reduced features."""
    from sklearn.cluster import HDBSCAN
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    n = len(features)
    reduced = StandardScaler().fit_transform(features)
    reduced = PCA(n_components=min(config.components, reduced.shape[1], n), random_state=config.seed).fit_transform(reduced)
    min_cluster = config.min_cluster_size or max(10, int(0.02 * n))
    min_samples = config.min_samples or max(2, min(100, int(0.05 * n)))
    return HDBSCAN(min_cluster_size=min_cluster, min_samples=min_samples, copy=True).fit_predict(reduced)


def filter_clusters(labels, clusters, *, drop_share: float = 0.5) -> np.ndarray:
    """Rows to drop: per label, every cluster but the largest holding fewer than `drop_share` of the label's rows."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    dropped = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        ids, counts = np.unique(clusters[rows], return_counts=True)
        if len(ids) < 2:
            continue
        largest = ids[np.argmax(counts)]
        for cid, count in zip(ids, counts):
            if cid != largest and count < drop_share * len(rows):
                dropped += rows[clusters[rows] == cid].tolist()
    return np.asarray(sorted(dropped), dtype=int)


def cube_filter(victim, data: DefenderData, config: CUBEConfig) -> tuple[np.ndarray, dict]:
    """The suspect rows CUBE drops, and a summary of the clustering."""
    check(data, config)
    features = cls_embeddings(victim.model, victim.tokenizer, list(data.suspect["text"]), max_length=config.max_length)
    clusters = cluster(features, config=config)
    dropped = filter_clusters(data.suspect["label"], clusters, drop_share=config.drop_share)
    ids, counts = np.unique(clusters, return_counts=True)
    info = {"n_clusters": int((ids >= 0).sum()), "cluster_sizes": {str(int(i)): int(c) for i, c in zip(ids, counts)},
            "n_dropped": int(len(dropped))}
    return dropped, info


def cube(*, victim, data: DefenderData, config: CUBEConfig) -> DefenseResult:
    """Drop CUBE's outlier clusters from the suspect set and retrain a fresh model on the rest."""
    check(data, config)
    # the retraining recipe first: a missing backbone fails before the clustering
    recipe = retrain_recipe(victim=victim, config=config, defense="cube") if config.retrain else None
    dropped, info = cube_filter(victim, data, config)
    return drop_and_retrain(victim=victim, data=data, dropped=dropped, info=info,
                            recipe=recipe, desc="CUBE retrain")
