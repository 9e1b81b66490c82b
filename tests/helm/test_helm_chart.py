"""helm/spegel-py rendered by the real Helm SDK with its defaults and with every toggle.

Each case of :data:`helmcases.CASES` (which must flip every toggle) is rendered and linted; every
object must deserialize into the kubernetes client's model *losslessly* (a misspelt field is
silently dropped by the model, so the round trip catches it), every flag the chart passes must
exist in the real CLI's ``--help``, and objects that belong to a toggle appear exactly when it is
on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import kubernetes.client
import pytest
import yaml
from helmcases import CASES, Values, uncovered_toggles
from helmsupport import (
    CHART_DIR,
    CUSTOM_KINDS,
    NAMESPACE,
    Rendered,
    containers,
    flag_names,
    full_name,
    help_env_vars,
    help_flags,
    model_name,
    to_model,
)

from spegel_py.cli import build_parser
from spegel_py.settings import RegistrySettings, load


def test_cases_flip_every_toggle() -> None:
    """Every boolean, every optional value and every branch choice of values.yaml is rendered by
    some case, so every test over :data:`CASES` (schemas, policy scan) sees every variant."""
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert uncovered_toggles(defaults, schema) == []
    assert uncovered_toggles({**defaults, "brandNewToggle": False}, schema) == ["brandNewToggle: never True"]


# Flags the chart passes that another branch is adding to the CLI at the same time (flag -> where);
# checked like every other flag as soon as the CLI has them. Delete an entry once it has landed.
PENDING_FLAGS: dict[str, str] = {}


@pytest.fixture(scope="module")
def api() -> Iterator[kubernetes.client.ApiClient]:
    client = kubernetes.client.ApiClient()
    try:
        yield client
    finally:
        client.close()


@pytest.mark.parametrize("case", CASES)
def test_lint_reports_no_errors(case: str) -> None:
    report = helm.lint(CHART_DIR, CASES[case], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("case", CASES)
def test_every_object_deserializes_losslessly(
    case: str, renders: dict[str, Rendered], api: kubernetes.client.ApiClient
) -> None:
    rendered = renders[case]
    assert rendered.objects, "nothing rendered"
    for obj in rendered.objects:
        where = f"{obj['kind']} {obj['metadata']['name']}"
        assert obj["metadata"]["namespace"] == CASES[case].get("namespaceOverride", NAMESPACE), where
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            # No model exists for a custom resource: its metadata still must be valid ObjectMeta.
            meta = to_model(api, obj["metadata"], "V1ObjectMeta")
            assert api.sanitize_for_serialization(meta) == obj["metadata"], where
            assert isinstance(obj["spec"], dict), where
            continue
        model = to_model(api, obj, model_name(obj))
        assert (model.api_version, model.kind) == (obj["apiVersion"], obj["kind"]), where
        assert api.sanitize_for_serialization(model) == obj, f"{where}: fields lost in the model round trip"


@pytest.mark.process  # runs the real `spegel-py <subcommand> --help`
@pytest.mark.parametrize("case", CASES)
def test_every_flag_exists_in_the_cli(case: str, renders: dict[str, Rendered]) -> None:
    """Each container's flags, against the real ``spegel-py <subcommand> --help`` and parser."""
    problems: list[str] = []
    operators = {c["name"] for c in CASES[case].get("extraInitContainers", [])}
    for workload, container in containers(renders[case]):
        where = f"{workload['metadata']['name']}/{container['name']}"
        if container["name"] in operators:  # the operator's own image and arguments
            continue
        assert "command" not in container, f"{where}: the image's ENTRYPOINT (spegel-py) must be used"
        subcommand, *args = container["args"]
        try:
            unknown = sorted(set(flag_names(args)) - help_flags(subcommand) - set(PENDING_FLAGS))
            pending = set(flag_names(args)) & set(PENDING_FLAGS) - help_flags(subcommand)
            args = [a for a in args if a.split("=", 1)[0] not in pending]
        except AssertionError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if unknown:
            problems.append(f"{where}: spegel-py {subcommand} has no {unknown}")
            continue
        # Every env var the chart sets is read by the CLI, or expanded by the kubelet in the args.
        expanded_vars = {v for a in args for v in re.findall(r"\$\((\w+)\)", a)}
        env = {e["name"] for e in container.get("env", [])}
        unread = sorted(env - expanded_vars - help_env_vars(subcommand))
        if unread:
            problems.append(f"{where}: spegel-py {subcommand} reads no env var {unread}")
        # The values must parse too (booleans, durations, addresses): the real parser, offline.
        expanded = [a.replace("$(NODE_IP)", "10.0.0.1") for a in args]
        try:
            parsed = vars(build_parser().parse_args([subcommand, *expanded]))
        except SystemExit:
            problems.append(f"{where}: spegel-py {subcommand} rejects {args}")
            continue
        if subcommand == "registry":
            load(RegistrySettings, parsed, {})
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", CASES)
def test_rbac_exists_only_with_the_kubernetes_bootstrap(case: str, renders: dict[str, Rendered]) -> None:
    rendered = renders[case]
    kubernetes_bootstrap = CASES[case].get("bootstrap", {}).get("kind") == "kubernetes"
    rbac = {k for k in rendered.kinds() if k in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")}
    assert rbac == ({"Role", "RoleBinding"} if kubernetes_bootstrap else set())
    assert len(rendered.of_kind("ServiceAccount")) == 1
    main = rendered.named("DaemonSet", CASES[case].get("fullnameOverride") or full_name())
    pod = main["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is kubernetes_bootstrap
    if kubernetes_bootstrap:
        (role,) = rendered.of_kind("Role")
        assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
        (binding,) = rendered.of_kind("RoleBinding")
        assert binding["subjects"][0]["name"] == pod["serviceAccountName"]


def _enabled(values: Values, dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node


@pytest.mark.parametrize("case", CASES)
def test_toggled_objects_appear_exactly_when_on(case: str, renders: dict[str, Rendered]) -> None:
    values, kinds = CASES[case], renders[case].kinds()
    assert kinds["ServiceMonitor"] == (1 if _enabled(values, "serviceMonitor.enabled") is True else 0)
    assert kinds["NetworkPolicy"] == (1 if _enabled(values, "networkPolicy.enabled") is True else 0)
    dashboard = _enabled(values, "grafanaDashboard.enabled") is True
    operator = _enabled(values, "grafanaDashboard.mode") == "GrafanaOperator"
    assert kinds["GrafanaDashboard"] == (1 if dashboard and operator else 0)
    assert kinds["ConfigMap"] == (1 if dashboard and not operator else 0)
    mirror_add = _enabled(values, "spegel.containerdMirrorAdd") is not False
    # The hook: one cleanup DaemonSet + headless Service + cleanup-wait Job, beside the main objects.
    assert kinds["Job"] == (1 if mirror_add else 0)
    assert kinds["DaemonSet"] == (2 if mirror_add else 1)
    assert kinds["Service"] == (4 if mirror_add else 3)
    vpa = _enabled(values, "verticalPodAutoscaler.enabled") is True
    assert kinds["VerticalPodAutoscaler"] == (1 if vpa else 0)
    main = renders[case].named("DaemonSet", CASES[case].get("fullnameOverride") or full_name())
    volumes = [v["name"] for v in main["spec"]["template"]["spec"]["volumes"]]
    assert ("router-psk" in volumes) is bool(_enabled(values, "spegel.routerPskSecretName"))
    assert ("basic-auth" in volumes) is bool(_enabled(values, "basicAuthSecretName"))


def test_dashboard_ships_the_json_file_unchanged(renders: dict[str, Rendered]) -> None:
    expected = json.loads((CHART_DIR / "dashboards" / "spegel-py.json").read_text())
    (config_map,) = renders["dashboard-sidecar"].of_kind("ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert [json.loads(v) for v in config_map["data"].values()] == [expected]
    (dashboard,) = renders["dashboard-operator"].of_kind("GrafanaDashboard")
    assert json.loads(dashboard["spec"]["json"]) == expected
    assert dashboard["spec"]["instanceSelector"] == {"matchLabels": {"dashboards": "grafana"}}
    assert dashboard["spec"]["folder"] == "spegel"
