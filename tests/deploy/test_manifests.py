"""Deploy artefacts validate against their schemas and linters (no Docker engine needed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    exe = BIN / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (pip install -e .[dev])")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    r = _run(_tool("hadolint"), str(DEPLOY / "docker" / dockerfile))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_run_as_non_root_with_healthcheck(dockerfile: str) -> None:
    text = (DEPLOY / "docker" / dockerfile).read_text()
    users = [ln.split()[1] for ln in text.splitlines() if ln.startswith("USER ")]
    assert users and not users[-1].startswith(("root", "0")), users
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'VOLUME ["/var/cache/segpipe"]' in text


def test_compose_validates_against_compose_spec() -> None:
    r = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
             str(DEPLOY / "compose.yaml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_wiring() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert {"redis", "segpipe", "prometheus", "grafana"} <= set(compose["services"])
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["segpipe:9108"]
    assert compose["services"]["segpipe"]["environment"]["SEGPIPE_METRICS_PORT"] == "9108"


CORE_MANIFESTS = ["configmap.yaml", "secret.yaml", "statefulset.yaml", "service.yaml"]


@pytest.mark.parametrize("manifest", CORE_MANIFESTS)
def test_kubernetes_manifests_validate_strictly(manifest: str) -> None:
    r = _run(_tool("kubernetes-validate"), "--strict", str(DEPLOY / "k8s" / manifest))
    assert r.returncode == 0 and "passed" in r.stdout, r.stdout + r.stderr


def test_servicemonitor_validates_against_crd_subset() -> None:
    r = _run(_tool("check-jsonschema"), "--schemafile",
             str(DEPLOY / "k8s" / "schemas" / "servicemonitor.schema.json"),
             str(DEPLOY / "k8s" / "servicemonitor.yaml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_alert_rules_name_metrics_segpipe_exports() -> None:
    import re

    from pipeline.metrics import Metrics

    families = {fam.name for fam in Metrics().registry.collect()} | {"up"}  # up: Prometheus' own
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 6 and len({r["alert"] for r in rules}) == len(rules)
    for r in rules:
        assert r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"], r
        names = re.findall(r"\b(segpipe_[a-z0-9_]+|up)\b(?=[{\[ )]|$)", r["expr"])
        assert names, r["alert"]
        for name in names:
            assert re.sub(r"_(total|bucket|sum|count)$", "", name) in families, (r["alert"], name)
    # the same groups for the Prometheus Operator, and Prometheus in compose loads the file
    operator = yaml.safe_load((DEPLOY / "k8s" / "prometheusrule.yaml").read_text())
    assert operator["kind"] == "PrometheusRule" and operator["spec"]["groups"] == groups
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = {v.split(":")[1] for v in compose["services"]["prometheus"]["volumes"]}
    assert prom["rule_files"] == ["/etc/prometheus/alerts.yml"] and prom["rule_files"][0] in mounts


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    on_disk = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == on_disk


def test_statefulset_shards_and_probes() -> None:
    sts = yaml.safe_load((DEPLOY / "k8s" / "statefulset.yaml").read_text())
    pod = sts["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in pod["env"]}
    assert env["SEGPIPE_REPLICAS"]["value"] == str(sts["spec"]["replicas"])
    assert env["SEGPIPE_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert pod["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_grafana_dashboard_is_valid_json() -> None:
    for f in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        dash = json.loads(f.read_text())
        assert dash["panels"], f


def test_configmap_cameras_yaml_is_a_valid_run_config() -> None:
    from pipeline.config import parse_config
    from pipeline.shard import assign

    cm = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())
    raw = yaml.safe_load(cm["data"]["cameras.yaml"])
    cfg = parse_config(raw, env={"SEGPIPE_REDIS_URL": "redis://redis:6379/0"}, check_files=False)
    table = assign([c.id for c in cfg.cameras], 2)
    assert sum(len(v) for v in table.values()) == len(cfg.cameras)


def test_shards_command_prints_every_camera(tmp_path: Path) -> None:
    cams = "\n".join(f"  - id: cam{i}\n    url: rtsp://127.0.0.1/{i}" for i in range(12))
    (tmp_path / "c.yaml").write_text(f"model:\n  path: m.pt\ncameras:\n{cams}\n")
    r = _run(sys.executable, "-m", "pipeline", "shards", str(tmp_path / "c.yaml"), "--replicas", "3")
    assert r.returncode == 0, r.stderr
    rows = [ln.split() for ln in r.stdout.splitlines()[1:13]]
    assert sorted(c for c, _ in rows) == sorted(f"cam{i}" for i in range(12))
    assert {s.split("/")[1] for _, s in rows} == {"3"}
    bad = _run(sys.executable, "-m", "pipeline", "shards", str(tmp_path / "c.yaml"), "--replicas", "0")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


def test_grafana_queries_name_metrics_segpipe_exports() -> None:
    import re

    from pipeline.metrics import Metrics

    families = {fam.name for fam in Metrics().registry.collect()}
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "segpipe.json").read_text())
    used = {name for p in dash["panels"] for t in p["targets"]
            for name in re.findall(r"\b(segpipe_[a-z0-9_]+)\b", t["expr"])}
    assert used
    for name in used:
        assert re.sub(r"_(total|bucket|sum|count)$", "", name) in families, name
