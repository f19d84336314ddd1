"""The shipped Ray cluster configs: valid for Ray's own cluster launcher, and secure as shipped --
MLflow and the dashboard off public addresses, token authentication on every node and driver."""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from akd_ray.config import load_study
from akd_ray.study.cluster import check_resources

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["cluster.yaml", "cluster-local.yaml"]
COMMANDS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def commands(config: dict, *keys: str) -> list[str]:
    return [c for k in keys or COMMANDS for c in config.get(k, [])]


def env_command(config: dict) -> str:
    """The setup command that writes ~/.akd-ray.env, which every node's ~/.bashrc sources."""
    (cmd,) = [c for c in config["setup_commands"] if "> ~/.akd-ray.env" in c]
    return cmd


@pytest.mark.parametrize("name", CONFIGS)
def test_valid_for_rays_cluster_launcher(name):
    """What `ray up` does before it starts anything: fill in the provider's defaults, then check the
    result against Ray's schema (ray/autoscaler/ray-schema.json) and its own rules."""
    config = prepare_config(load(name))
    validate_config(config)
    assert config["head_node_type"] in config["available_node_types"]
    with pytest.raises(jsonschema.ValidationError):  # the check has teeth
        validate_config({**copy.deepcopy(config), "no_such_field": 1})


@pytest.mark.parametrize("name", CONFIGS)
def test_every_command_is_valid_shell(name):
    for cmd in commands(load(name)):
        assert subprocess.run(["bash", "-n", "-c", cmd]).returncode == 0, cmd


@pytest.mark.parametrize("name", CONFIGS)
def test_token_auth_is_on_for_every_node_and_driver(name):
    config = load(name)
    text = (ROOT / name).read_text()
    assert "RAY_AUTH_MODE=disabled" not in text and "RAY_AUTH_MODE: disabled" not in text
    # the same token file on every node, at the path Ray reads by default
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    # every `ray start` (head and workers) runs in token mode ...
    starts = [c for c in commands(config, "head_start_ray_commands", "worker_start_ray_commands") if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    # ... and so does every later command and driver (`ray exec`, jobs): the env file ~/.bashrc sources
    assert "export RAY_AUTH_MODE=token" in env_command(config)


@pytest.mark.parametrize("name", CONFIGS)
def test_dashboard_and_mlflow_stay_off_public_addresses(name):
    config = load(name)
    every = " ".join(commands(config))
    assert "0.0.0.0" not in every and "[::]" not in every
    (head,) = [c for c in config["head_start_ray_commands"] if "ray start --head" in c]
    assert "--dashboard-host=127.0.0.1" in head  # reached through `ray dashboard` (SSH)
    (server,) = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    args = shlex.split(server[server.index("mlflow server"):].split(">")[0])
    assert args[args.index("--host") + 1] == "$HEAD_PRIVATE_IP"
    if config["provider"]["type"] == "local":
        for ip in [config["provider"]["head_ip"], *config["provider"]["worker_ips"]]:
            assert ipaddress.ip_address(ip).is_private


@pytest.mark.parametrize("name", CONFIGS)
def test_every_node_points_at_the_mlflow_server_on_the_head(name, tmp_path):
    """Run the env-file command as a worker would (RAY_HEAD_IP set by the launcher) and read the file."""
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"], "RAY_HEAD_IP": "10.1.2.3"}
    subprocess.run(["bash", "-c", env_command(load(name))], env=env, check=True)
    written = (tmp_path / ".akd-ray.env").read_text()
    assert "export HEAD_PRIVATE_IP=10.1.2.3\n" in written
    assert "export MLFLOW_TRACKING_URI=http://10.1.2.3:5000\n" in written
    assert "source ~/.akd-ray.env" in (tmp_path / ".bashrc").read_text()


def test_on_aws_the_head_finds_its_private_address_as_ray_does(tmp_path):
    """On the head the launcher sets no RAY_HEAD_IP: the address is the one Ray binds to."""
    env = {"HOME": str(tmp_path), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run(["bash", "-c", env_command(load("cluster.yaml"))], env=env, check=True)
    written = (tmp_path / ".akd-ray.env").read_text()
    ip = re.search(r"HEAD_PRIVATE_IP=(\S+)", written).group(1)
    assert ip == ray.util.get_node_ip_address() and not ipaddress.ip_address(ip).is_unspecified


def test_aws_cluster_pins_rays_image_and_autoscales_gpu_workers():
    config = load("cluster.yaml")
    docker = config["docker"]
    for image in (docker["image"], docker["head_image"]):
        assert image.startswith(f"rayproject/ray:{ray.__version__}-")
    gpu = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert any(t["max_workers"] > t.get("min_workers", 0) for t in gpu)
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in gpu)
    # the study's storage is shared: EFS mounted on each host and into each container
    assert any("/mnt/efs" in c and "mount" in c for c in config["initialization_commands"])
    assert "--volume /mnt/efs:/mnt/efs" in docker["run_options"]


def test_max_concurrent_may_exceed_the_cluster_as_it_starts(monkeypatch):
    """On an autoscaling cluster the study sets resources.max_concurrent for the nodes still to come."""
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 1.0})  # one g5.2xlarge
    glue = ROOT / "studies/glue.yaml"  # 4 CPUs and half a GPU per trial
    assert check_resources(load_study(glue)) == 2
    assert check_resources(load_study(glue, ["resources.max_concurrent=16"])) == 16
