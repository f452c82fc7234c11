"""`--ray` and its settings, in a module that imports no model library and not Ray (the CLI reads it at start-up)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from saexplain.config import Config


class RayConfig(Config):
    """Where and how wide a command runs on Ray. Never part of any identity: the same cache or run comes out of
    one process or of a cluster (every field is a speed setting)."""

    cli_name: ClassVar[str] = "ray_cfg"
    speed_fields: ClassVar[frozenset[str]] = frozenset({"ray", "ray_workers", "ray_cpus_per_worker",
                                                        "ray_gpus_per_worker", "ray_num_cpus", "ray_nodes"})
    ray: str = Field("", description="run on Ray: `--ray` alone starts a Ray on this machine for the command, "
                     "`--ray auto` joins the cluster this machine is part of, `--ray ray://HOST:10001` a remote one")
    ray_workers: int = Field(0, ge=0, description="Ray workers (each loads the subject once); 0: one per GPU with "
                             "--ray-gpus-per-worker, else one per --ray-cpus-per-worker CPUs of the cluster")
    ray_cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved by each Ray worker (its torch threads)")
    ray_gpus_per_worker: float = Field(0.0, ge=0, description="GPUs reserved by each Ray worker (pass --device cuda)")
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of a Ray started for the command (default: all)")
    ray_nodes: str | None = Field(None, description="JSON file: per-node LLM endpoint, "
                                  '{"10.0.0.5": {"llm": "openai-compatible:http://10.0.0.5:8000/v1#MODEL"}} '
                                  "(docs/distributed.md)")

    @property
    def enabled(self) -> bool:
        return bool(self.ray)
