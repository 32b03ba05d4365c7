"""Ray's ``ray.util.joblib`` documentation example (scikit-learn's RandomizedSearchCV on
the digits data), with one change: ``import ray`` became ``import meshcompute as ray`` (so
``from ray.util.joblib import register_ray`` reads ``from meshcompute.util.joblib import
register_ray``), and a smaller search so that it runs in seconds on 2 CPUs.
Run as a script; prints OK."""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import RandomizedSearchCV
from sklearn.svm import SVC

import meshcompute as ray

digits = load_digits()
param_space = {
    "C": np.logspace(-6, 6, 30),
    "gamma": np.logspace(-8, 8, 30),
    "tol": np.logspace(-4, -1, 30),
    "class_weight": [None, "balanced"],
}
model = SVC(kernel="rbf")
search = RandomizedSearchCV(model, param_space, cv=3, n_iter=8, random_state=0)

import joblib  # noqa: E402

from meshcompute.util.joblib import register_ray  # noqa: E402

register_ray()
with joblib.parallel_backend("ray"):
    search.fit(digits.data, digits.target)

assert ray.is_initialized()  # the backend started a node for the search
assert len(search.cv_results_["mean_test_score"]) == 8
assert 0.0 <= search.best_score_ <= 1.0
print("OK")
