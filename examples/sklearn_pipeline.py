"""``VolumeUpsampler`` inside a scikit-learn Pipeline, tuned by GridSearchCV
=========================================================================

Synthetic 8 x 8 x 8 volumes hold either a solid ball or a hollow shell of the same size,
at a random place, with noise; flattened to rows of 512 features as scikit-learn expects.
The pipeline upsamples each row back into a volume (``volume_shape`` says how), reduces
it with PCA and classifies it with logistic regression. GridSearchCV picks the
upsampling factor and kernel with the rest, by cross-validation, like any other
hyperparameter (``up__factor``, ``up__kernel``).

Run:  python examples/sklearn_pipeline.py   (a few seconds)
"""
import time

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline

from tconv3d.upsampling import VolumeUpsampler

SIDE = 8


def make_volumes(n, seed=0):
    """``(n, SIDE**3)`` float32 rows of flattened volumes and ``(n,)`` labels (1: shell)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(SIDE)] * 3, indexing="ij"), axis=-1)
    X, y = np.empty((n, SIDE ** 3), np.float32), rng.integers(0, 2, n)
    for i in range(n):
        centre = rng.uniform(2.5, SIDE - 3.5, 3)
        radius = np.linalg.norm(grid - centre, axis=-1)
        shape = radius <= 2.6 if y[i] == 0 else np.abs(radius - 2.2) <= 0.7
        X[i] = (shape + 0.4 * rng.standard_normal(shape.shape)).ravel()
    return X, y


def main(n=160, seed=0):
    X, y = make_volumes(n, seed)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25,
                                                        random_state=seed, stratify=y)
    pipeline = Pipeline([
        ("up", VolumeUpsampler(volume_shape=(SIDE, SIDE, SIDE))),
        ("pca", PCA(n_components=12, random_state=seed)),
        ("clf", LogisticRegression(max_iter=2000)),
    ])
    grid = {"up__factor": [1, 2, (2, 2, 1)], "up__kernel": ["nearest", "trilinear"]}
    search = GridSearchCV(pipeline, grid, cv=3)
    start = time.perf_counter()
    search.fit(X_train, y_train)
    elapsed = time.perf_counter() - start

    print(f"{len(X_train)} training volumes of {SIDE}x{SIDE}x{SIDE} (flattened to "
          f"{X.shape[1]} features), 3-fold grid search in {elapsed:.1f} s")
    print(f"{'up__factor':<12}{'up__kernel':<12}{'accuracy':>10}")
    results = search.cv_results_
    for params, score in zip(results["params"], results["mean_test_score"]):
        print(f"{params['up__factor']!s:<12}{params['up__kernel']:<12}{score:>10.3f}")
    print(f"best parameters: {search.best_params_} (cross-validated accuracy "
          f"{search.best_score_:.3f})")
    features = search.best_estimator_.named_steps["up"].get_feature_names_out()
    print(f"upsampled features: {len(features)} ({features[0]}, {features[1]}, ...)")
    test = search.score(X_test, y_test)
    print(f"held-out accuracy: {test:.3f} on {len(X_test)} volumes")
    return test


if __name__ == "__main__":
    main()
