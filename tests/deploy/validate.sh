#!/bin/sh
# Offline checks of everything under deploy/: YAML lint, Kubernetes schemas (deploy/k8s, the
# inference gateway objects in deploy/k8s/gateway, the overlays deploy/k8s-cpu and
# deploy/k8s-model-init), Prometheus rules and their unit tests, and the haproxy config (both
# renderings of deploy/proxy/haproxy.cfg.in).
# Needs the Debian packages yamllint, prometheus (promtool), haproxy, nodejs and npm; installs
# the pinned npm packages of package-lock.json into tests/deploy/node_modules on first use.
# The Docker image (deploy/Dockerfile) is not built here: there is no Docker engine in CI.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
deploy=$(cd "$here/../../deploy" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A machine without the tools skips (exit 77, ctest's SKIP_RETURN_CODE) rather than fails.
for tool in yamllint promtool haproxy node npm; do
  if ! command -v "$tool" > /dev/null; then
    echo "SKIP: validate.sh needs $tool (apt-get install yamllint prometheus haproxy nodejs npm)"
    exit 77
  fi
done

echo "== yamllint"
yamllint -s -c "$deploy/.yamllint" "$deploy"

echo "== Kubernetes schemas"
# (Re)install when package-lock.json changed since the last install.
if ! cmp -s "$here/package-lock.json" "$here/node_modules/.installed-lock.json"; then
  npm ci --prefix "$here" --no-audit --no-fund
  cp "$here/package-lock.json" "$here/node_modules/.installed-lock.json"
fi
# The plain deployment, the inference gateway objects beside it, and the two variants of it.
for kustomization in k8s k8s/gateway k8s-cpu k8s-model-init; do
  echo "-- deploy/$kustomization"
  node "$here/validate_k8s.mjs" "$deploy/$kustomization"
done
# The hand-written InferencePool schema must catch a mistake: a misspelt field.
mkdir "$tmp/broken"
sed 's/number: 9002/numbr: 9002/' "$deploy/k8s/gateway/inferencepool.yaml" \
  > "$tmp/broken/inferencepool.yaml"
printf 'resources:\n  - inferencepool.yaml\n' > "$tmp/broken/kustomization.yaml"
if node "$here/validate_k8s.mjs" "$tmp/broken" > "$tmp/broken.log" 2>&1 ||
   ! grep -q "FAIL inferencepool.yaml: InferencePool lizard: /spec/endpointPickerRef/port" \
     "$tmp/broken.log"; then
  cat "$tmp/broken.log"
  echo "validate_k8s.mjs accepted a broken InferencePool" >&2
  exit 1
fi

echo "== Prometheus rules"
promtool check rules "$deploy/prometheus/alerts.yaml"
promtool test rules "$deploy/prometheus/alerts_test.yaml"

echo "== Grafana dashboard"
# Every panel query must be valid PromQL: turn them into recording rules (JSON is YAML) with
# Grafana's variables replaced, and let promtool parse them.
node -e '
  const dashboard = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const rules = dashboard.panels.flatMap((panel) => panel.targets).map((target, i) => ({
    record: `dashboard:query_${i}`,
    expr: target.expr.replaceAll("$__rate_interval", "5m").replaceAll("$instance", ".*"),
  }));
  console.log(JSON.stringify({ groups: [{ name: "dashboard", rules }] }));
' "$deploy/grafana/lizard-dashboard.json" > "$tmp/dashboard-rules.json"
promtool check rules "$tmp/dashboard-rules.json"

echo "== haproxy"
# The Kubernetes rendering must be current: regenerate it with the command below if this fails.
"$deploy/proxy/render.sh" '*:8080' \
  'server-template lizard 16 "lizard-headless.${POD_NAMESPACE}.svc.${CLUSTER_DOMAIN}:50051" resolvers cluster_dns init-addr none' \
  > "$tmp/k8s.cfg"
if ! diff -u "$deploy/k8s/proxy/haproxy.cfg" "$tmp/k8s.cfg"; then
  echo "deploy/k8s/proxy/haproxy.cfg is stale: rerender it as in tests/deploy/validate.sh" >&2
  exit 1
fi
POD_NAMESPACE=default CLUSTER_DOMAIN=cluster.local haproxy -c -f "$tmp/k8s.cfg"
# The rendering the session-affinity test uses.
"$deploy/proxy/render.sh" 127.0.0.1:8080 "server r0 127.0.0.1:50051" "server r1 127.0.0.1:50052" \
  > "$tmp/test.cfg"
haproxy -c -f "$tmp/test.cfg"

echo "validate.sh: all deploy checks passed"
