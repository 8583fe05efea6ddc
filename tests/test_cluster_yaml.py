"""cluster.yaml: Ray's own cluster-config schema accepts it, and it describes the cluster the docs promise."""

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def ray_check(cfg: dict) -> dict:
    """What `ray up` runs on a config before it launches anything."""
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


def test_ray_schema_accepts_cluster_yaml(cfg):
    prepared = ray_check(cfg)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("mutate", [
    lambda c: c["available_node_types"]["gpu_worker"].update(resourcez={"GPU": 1}),  # unknown key
    lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU="one"),  # wrong type
    lambda c: c["available_node_types"]["cpu_worker"].pop("node_config"),  # a required key missing
])
def test_ray_schema_rejects_broken_variants(cfg, mutate):
    """The check above is real: the same validator refuses a typo or a wrong type."""
    bad = copy.deepcopy(cfg)
    mutate(bad)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_check(bad)


def test_node_roles(cfg):
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    # The head runs drivers, the annotator and the store; Ray places no actors there.
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    gpu = [v for v in workers.values() if v["resources"].get("GPU", 0) >= 1]
    cpu = [v for v in workers.values() if not v["resources"].get("GPU") and v["resources"].get("CPU", 0) >= 4]
    assert gpu and cpu, "needs GPU workers (scoring actor, learner) and CPU workers (env runners)"
    assert any(v.get("min_workers", 0) >= 1 for v in gpu), "the scoring actor needs a GPU node from the start"
    for name, t in types.items():
        assert t["node_config"].get("InstanceType"), f"{name}: no InstanceType"
    for t in gpu:
        assert t["node_config"]["InstanceType"].split(".")[0][0] in "gp", "GPU node type must be a g*/p* instance"
        assert "-gpu" in t.get("docker", {}).get("worker_image", cfg["docker"]["image"])
    total_max = sum(v.get("max_workers", 0) for v in workers.values())
    assert cfg["max_workers"] <= total_max


def test_images_match_installed_ray_and_python(cfg):
    """The containers must run the Ray version pinned in pyproject.toml (a mismatch cannot join jobs)."""
    pins = re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert pins == ray.__version__
    images = [cfg["docker"]["image"], cfg["docker"].get("head_image"), cfg["docker"].get("worker_image")]
    images += [t.get("docker", {}).get("worker_image") for t in cfg["available_node_types"].values()]
    for image in filter(None, images):
        m = re.fullmatch(r"rayproject/ray:([0-9.]+)-py3(\d+)-(cpu|gpu|cu\d+)", image)
        assert m, image
        assert m.group(1) == ray.__version__, f"{image}: Ray {m.group(1)} but the project pins {pins}"
        assert int(m.group(2)) >= 10, f"{image}: the project needs Python >= 3.10"


def test_setup_installs_this_project_with_the_makefile_torch_pins(cfg):
    pins = re.search(r"^TORCH_PINS\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    mounts = cfg["file_mounts"]
    project_dir = next(remote for remote, local in mounts.items() if local == ".")
    setup = cfg["setup_commands"]
    install = [c for c in setup if "pip install" in c and f"-e {project_dir}" in c]
    assert install, f"no `pip install -e {project_dir}` in setup_commands"
    torch_first = setup.index(next(c for c in setup if "pip install" in c))
    for pin in pins:
        assert f'"{pin}"' in setup[torch_first] or pin in setup[torch_first].split(), pin
        assert pin in install[0], f"{pin} missing from the project install: pip could pick another torch"
    assert setup.index(install[0]) > torch_first
    for excluded in (".venv", ".git", "results"):
        assert excluded in cfg["rsync_exclude"]


def test_shared_storage_and_token_auth(cfg):
    init = " ".join(cfg["initialization_commands"])
    assert "mount -t nfs4" in init and "/mnt/shared" in init
    assert any(re.fullmatch(r"(--volume|-v)[ =]/mnt/shared:/mnt/shared", o) for o in cfg["docker"]["run_options"]), \
        "the shared file system must be visible inside the containers"
    assert cfg["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    for cmd in cfg["head_start_ray_commands"][1:] + cfg["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token" in cmd and "ray start" in cmd
    assert "--head" in cfg["head_start_ray_commands"][-1]
    assert "$RAY_HEAD_IP" in cfg["worker_start_ray_commands"][-1]
