"""The AKS variant of the work pool: prefect-kubernetes' own worker renders our base job
template into a Job manifest, and our Helm values pass the prefect-worker chart's schema after
the chart's defaults are merged in as Helm merges them. No cluster here: what can be checked
without one is checked."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

from pcdb.config import DEPLOYMENTS

K8S = DEPLOYMENTS / "k8s"
CHART = Path(__file__).resolve().parent.parent / "data" / "prefect-worker-chart"


def template() -> dict:
    return json.loads((K8S / "base-job-template.json").read_text())


# prefect-kubernetes is installed apart (scripts/split_lock.py): in this interpreter it would become
# a Prefect collection for the rest of the session. The rendering runs in a child that sees it.
K8S_SITE = Path(sys.prefix) / "k8s-site"
RENDER = """
import json, sys
from uuid import uuid4
import anyio
from prefect.client.schemas.objects import FlowRun
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

async def build(template, values):
    config = await KubernetesWorkerJobConfiguration.from_template_and_values(template, values)
    config.prepare_for_flow_run(FlowRun(id=uuid4(), flow_id=uuid4(), name="quiet-otter"))
    return config.job_manifest

template, values = json.load(sys.stdin)
print(json.dumps(anyio.run(build, template, values)))
"""


def render(values: dict) -> dict:
    assert (K8S_SITE / "prefect_kubernetes").is_dir(), f"{K8S_SITE} lacks prefect-kubernetes: run ./dev setup"
    child = subprocess.run([sys.executable, "-c", RENDER], check=False, input=json.dumps([template(), values]),
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(K8S_SITE)})
    assert child.returncode == 0, child.stderr[-2000:]
    return json.loads(child.stdout)


def test_the_base_job_template_renders_into_a_job_that_never_reruns_a_runbook_and_holds_no_secret():
    manifest = render({"image": "registry.example/pcdb:1.0"})
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    assert manifest["metadata"]["namespace"] == "pcdb"
    assert manifest["spec"]["backoffLimit"] == 0          # Kubernetes never starts a drill twice
    pod = manifest["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "pcdb-runbooks" and pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["image"] == "registry.example/pcdb:1.0"
    assert container["envFrom"] == [{"secretRef": {"name": "pcdb-prod-azure"}}]  # referenced, not written
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PREFECT_LOGGING_EXTRA_LOGGERS"] == "pcdb" and "PREFECT__FLOW_RUN_ID" in env
    assert container["securityContext"]["runAsNonRoot"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/var/lib/pcdb", "/tmp"}
    assert not any(k in json.dumps(manifest).lower() for k in ("password", "client_secret"))


def test_the_work_pool_refuses_a_deployment_without_an_image():
    import pytest
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    with pytest.raises(ValidationError, match="image"):  # what the server checks job variables with
        validate({}, template()["variables"], raise_on_error=True)
    validate({"image": "registry.example/pcdb:1.0"}, template()["variables"], raise_on_error=True)


def validate(values: dict) -> None:
    """The chart's schema says only "http://json-schema.org/schema#": read it as Draft 7, as Helm does."""
    jsonschema.Draft7Validator(json.loads((CHART / "values.schema.json").read_text())).validate(values)


def coalesce(defaults: dict, override: dict) -> dict:
    """Helm's merge of user values over chart defaults: maps merge, anything else replaces."""
    out = copy.deepcopy(defaults)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = coalesce(out[key], value)
        else:
            out[key] = value
    return out


def test_the_helm_values_pass_the_charts_schema_with_the_template_set_from_its_file():
    ours = yaml.safe_load((K8S / "prefect-worker-values.yaml").read_text())
    ours["worker"]["config"]["baseJobTemplate"]["configuration"] = (K8S / "base-job-template.json").read_text()
    values = coalesce(yaml.safe_load((CHART / "values.yaml").read_text()), ours)
    validate(values)
    worker = values["worker"]
    assert worker["apiConfig"] == "selfHostedServer" and worker["selfHostedServerApiConfig"]["apiUrl"].endswith("/api")
    assert worker["config"]["workPool"] == "pcdb-prod" and worker["config"]["type"] == "kubernetes"
    assert json.loads(worker["config"]["baseJobTemplate"]["configuration"]) == template()
    # The API's credential comes from a Kubernetes Secret, for the worker and for every flow-run Job.
    auth = worker["selfHostedServerApiConfig"]["basicAuth"]
    assert auth["enabled"] is True and auth["existingSecret"] == "pcdb-prefect-auth"
    env = {e["name"]: e["value"] for e in worker["extraEnvVars"]}
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME"] == "pcdb-prefect-auth"
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY"] == "auth-string"
    assert "authString" not in json.dumps(ours)                          # no credential written in the values


def test_a_misspelt_helm_value_is_refused_by_the_schema():
    import pytest

    bad = coalesce(yaml.safe_load((CHART / "values.yaml").read_text()),
                   {"worker": {"config": {"workPool": "pcdb-prod", "workpool": "typo"}}})
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
