"""advisor: decides which gpu_lock settings to roll out, and how.

    from advisor import tune, TuneOptions
    rec = tune(trace, baseline_settings, cluster=..., options=TuneOptions(trials=100))

`tune` returns a typed `Recommendation` (rec.json, schema gpusim.recommendation/1). The modules:
space (the search space), evaluate (one trial, paired with the baseline), search (the Optuna
study), storage and worker (shared studies, heartbeats, retries), choose (re-check and the
selection rule), explain and per_type (headroom, what-ifs, sentences), recommendation (the
schema), report (report.md / report.html), tune (all of it in order).
"""

from advisor.recommendation import Recommendation
from advisor.tune import TuneOptions, tune

__all__ = ["tune", "TuneOptions", "Recommendation"]
