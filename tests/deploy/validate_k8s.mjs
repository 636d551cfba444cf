// Validates the manifests of a kustomization offline against the Kubernetes OpenAPI schemas
// shipped by the npm package kubernetes-models (and the Prometheus Operator CRDs by
// @kubernetes-models/prometheus-operator), and checks what schemas cannot:
//   * the ConfigMaps and PersistentVolumeClaims the workloads refer to are defined,
//   * every $(VAR) in a container's args is defined (env or a generated env-file ConfigMap), and
//     every key of those env files is used,
//   * lizard-server gets more terminationGracePeriodSeconds than its --drain-grace, and its
//     startup probe allows at least 10 minutes for the model to load.
// Usage: node validate_k8s.mjs KUSTOMIZATION_DIR
import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { parse, parseAllDocuments } from "yaml";

// Packages holding models for API groups other than Kubernetes' own.
const crdPackages = { "monitoring.coreos.com": "@kubernetes-models/prometheus-operator" };

async function modelFor(apiVersion, kind) {
  const group = apiVersion.includes("/") ? apiVersion.split("/")[0] : "";
  const pkg = crdPackages[group] ?? "kubernetes-models";
  try {
    const module = await import(`${pkg}/${apiVersion}/${kind}`);
    return module[kind];
  } catch {
    return null;
  }
}

const dir = process.argv[2];
const kustomization = parse(readFileSync(join(dir, "kustomization.yaml"), "utf8"));
const errors = [];
const defined = { ConfigMap: new Set(), PersistentVolumeClaim: new Set() };
const workloads = [];

// Keys of the env-file ConfigMaps, by ConfigMap name.
const envKeys = new Map();
for (const generator of kustomization.configMapGenerator ?? []) {
  defined.ConfigMap.add(generator.name);
  for (const file of [...(generator.envs ?? []), ...(generator.files ?? [])]) {
    const path = join(dir, file.includes("=") ? file.split("=")[1] : file);
    if (!existsSync(path)) errors.push(`configMapGenerator ${generator.name}: missing ${path}`);
  }
  for (const file of generator.envs ?? []) {
    const lines = readFileSync(join(dir, file), "utf8").split("\n");
    const keys = lines.filter((l) => l.trim() && !l.startsWith("#")).map((l) => l.split("=")[0]);
    envKeys.set(generator.name, [...(envKeys.get(generator.name) ?? []), ...keys]);
  }
}

for (const file of kustomization.resources ?? []) {
  const docs = parseAllDocuments(readFileSync(join(dir, file), "utf8"));
  for (const doc of docs) {
    if (doc.errors.length) {
      errors.push(`${file}: ${doc.errors[0].message}`);
      continue;
    }
    const object = doc.toJS();
    if (!object) continue;
    const where = `${file}: ${object.kind} ${object.metadata?.name}`;
    const Model = await modelFor(object.apiVersion, object.kind);
    if (!Model) {
      errors.push(`${where}: no schema for ${object.apiVersion} ${object.kind}`);
      continue;
    }
    try {
      new Model(object).validate();
      console.log(`ok   ${where}`);
    } catch (error) {
      errors.push(`${where}: ${error.message}`);
    }
    if (object.metadata?.namespace) errors.push(`${where}: sets a namespace (keep manifests namespace-agnostic)`);
    if (defined[object.kind]) defined[object.kind].add(object.metadata.name);
    if (object.kind === "Deployment") workloads.push([where, object.spec.template.spec]);
  }
}

// Names a pod spec refers to must exist in the kustomization.
for (const [where, pod] of workloads) {
  const refs = [];
  for (const volume of pod.volumes ?? []) {
    if (volume.configMap) refs.push(["ConfigMap", volume.configMap.name]);
    if (volume.persistentVolumeClaim) refs.push(["PersistentVolumeClaim", volume.persistentVolumeClaim.claimName]);
  }
  for (const container of pod.containers) {
    const vars = new Set((container.env ?? []).map((e) => e.name));
    const fromFiles = [];
    for (const source of container.envFrom ?? []) {
      if (!source.configMapRef) continue;
      refs.push(["ConfigMap", source.configMapRef.name]);
      for (const key of envKeys.get(source.configMapRef.name) ?? []) {
        vars.add(key);
        fromFiles.push(key);
      }
    }
    const args = [...(container.command ?? []), ...(container.args ?? [])].join(" ");
    const used = new Set([...args.matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)].map((m) => m[1]));
    for (const name of used) {
      if (!vars.has(name)) errors.push(`${where}: args use $(${name}), which is not defined`);
    }
    for (const key of fromFiles) {
      if (!used.has(key)) errors.push(`${where}: ${key} of its env ConfigMap is never used in args`);
    }
    if (container.name === "lizard-server") checkServerTiming(where, pod, container);
  }
  for (const [kind, name] of refs) {
    if (!defined[kind].has(name)) errors.push(`${where}: refers to undefined ${kind} ${name}`);
  }
}

// Draining needs the grace period, and a large model needs time to load before liveness starts.
function checkServerTiming(where, pod, container) {
  const grace = (container.args ?? []).map((a) => a.match(/^--drain-grace=(\d+)s$/)).find(Boolean);
  if (!grace) {
    errors.push(`${where}: lizard-server args lack --drain-grace=Ns`);
  } else if (!(pod.terminationGracePeriodSeconds > Number(grace[1]))) {
    errors.push(`${where}: terminationGracePeriodSeconds must exceed --drain-grace (${grace[1]}s)`);
  }
  const startup = container.startupProbe ?? {};
  if ((startup.periodSeconds ?? 10) * (startup.failureThreshold ?? 3) < 600) {
    errors.push(`${where}: the startup probe allows less than 10 minutes for model load`);
  }
}

for (const error of errors) console.error(`FAIL ${error}`);
process.exit(errors.length ? 1 : 0);
