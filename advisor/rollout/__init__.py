"""advisor.rollout: taking a gpu_lock config to production and back.

history (the append-only config history), rollback (the rollback plan and its simulation),
impact (the before/after report of a config change, GPU_LOCK_CONFIG_005); the canary's plan
and judge live beside them: stages (stages, gates, rollback triggers of GPU_LOCK_CONFIG_002),
fleet (one stage simulated), power (minimum acquisitions), plan (`gpusim canary plan`), argo
(the plan as Argo Rollouts AnalysisTemplates), judge (`gpusim canary judge`).
"""
