// Validates the manifests of a kustomization offline against the Kubernetes OpenAPI schemas
// shipped by the npm package kubernetes-models (the ServiceMonitor against
// @kubernetes-models/prometheus-operator, the HTTPRoute against @kubernetes-models/gateway-api,
// the InferencePool against inferencepool.schema.json), and checks what schemas cannot:
//   * the ConfigMaps and PersistentVolumeClaims the workloads refer to are defined,
//   * every $(VAR) in a container's args is defined (env or a generated env-file ConfigMap), and
//     every key of those env files is used,
//   * lizard-server gets more terminationGracePeriodSeconds than its --drain-grace, and its
//     startup probe allows at least 10 minutes for the model to load.
// The kustomization is built here as kustomize builds it, for what deploy/ uses: resources
// (files, or directories of a base kustomization), configMapGenerator (envs, files, literals,
// `behavior: merge`) and strategic-merge patches. Where kubectl is installed, its kustomize must
// build the same objects.
// Usage: node validate_k8s.mjs KUSTOMIZATION_DIR
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { isDeepStrictEqual } from "node:util";
import { fileURLToPath } from "node:url";
import Ajv from "ajv";
import { parse, parseAllDocuments } from "yaml";

const here = dirname(fileURLToPath(import.meta.url));

// Packages holding models for API groups other than Kubernetes' own.
const crdPackages = {
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
};
// JSON schemas written here, for what no package carries.
const jsonSchemas = { "inference.networking.k8s.io/v1 InferencePool": "inferencepool.schema.json" };

// A function that throws an Error saying what is wrong with an object, or null (no schema).
async function validatorFor(apiVersion, kind) {
  const schemaFile = jsonSchemas[`${apiVersion} ${kind}`];
  if (schemaFile) {
    const check = new Ajv({ allErrors: true }).compile(
      JSON.parse(readFileSync(join(here, schemaFile), "utf8")));
    return (object) => {
      if (!check(object)) {
        throw new Error(check.errors.map((e) => `${e.instancePath || "/"} ${e.message}`).join("; "));
      }
    };
  }
  const group = apiVersion.includes("/") ? apiVersion.split("/")[0] : "";
  const pkg = crdPackages[group] ?? "kubernetes-models";
  try {
    const Model = (await import(`${pkg}/${apiVersion}/${kind}`))[kind];
    return (object) => new Model(object).validate();
  } catch {
    return null;
  }
}

const errors = [];

// The list fields our patches touch, by their merge key (the Kubernetes schema's
// patchMergeKey); a patch replaces any other list.
const mergeKeys = {
  containers: "name",
  initContainers: "name",
  volumes: "name",
  env: "name",
  volumeMounts: "mountPath",
  ports: "containerPort",
};
const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

// Applies a strategic merge patch to `target`: maps merge, null deletes a key, merge-keyed list
// items merge by key, and an item with `$patch: delete` is removed.
function mergePatch(target, patch) {
  for (const [key, value] of Object.entries(patch)) {
    if (key === "$patch") continue;
    if (value === null) {
      delete target[key];
    } else if (Array.isArray(value) && mergeKeys[key] && Array.isArray(target[key])) {
      const mergeKey = mergeKeys[key];
      for (const item of value) {
        const i = target[key].findIndex((existing) => existing[mergeKey] === item[mergeKey]);
        if (item.$patch === "delete") {
          if (i >= 0) target[key].splice(i, 1);
        } else if (i >= 0) {
          mergePatch(target[key][i], item);
        } else {
          target[key].push(item);
        }
      }
    } else if (isObject(value) && isObject(target[key])) {
      mergePatch(target[key], value);
    } else {
      target[key] = value;
    }
  }
}

// The objects of the kustomization in `dir` ({file, object}), and the keys of each generated
// ConfigMap by name (`envKeys`: those from env files and literals, which args may use).
function build(dir, root = dir) {
  const kustomization = parse(readFileSync(join(dir, "kustomization.yaml"), "utf8"));
  const objects = [];
  const configMaps = new Map();  // name -> {envKeys: []}
  for (const entry of kustomization.resources ?? []) {
    const path = join(dir, entry);
    if (statSync(path).isDirectory()) {
      const base = build(path, root);
      objects.push(...base.objects);
      for (const [name, keys] of base.configMaps) configMaps.set(name, keys);
      continue;
    }
    for (const doc of parseAllDocuments(readFileSync(path, "utf8"))) {
      if (doc.errors.length) {
        errors.push(`${relative(root, path)}: ${doc.errors[0].message}`);
      } else if (doc.toJS()) {
        objects.push({ file: relative(root, path), object: doc.toJS() });
      }
    }
  }
  for (const generator of kustomization.configMapGenerator ?? []) {
    const merging = generator.behavior === "merge";
    if (merging !== configMaps.has(generator.name)) {
      errors.push(`configMapGenerator ${generator.name}: ${merging ? "merges into no base ConfigMap"
                                                                  : "is defined twice"}`);
    }
    const envKeys = merging ? [...(configMaps.get(generator.name)?.envKeys ?? [])] : [];
    for (const file of [...(generator.envs ?? []), ...(generator.files ?? [])]) {
      const path = join(dir, file.includes("=") ? file.split("=")[1] : file);
      if (!existsSync(path)) errors.push(`configMapGenerator ${generator.name}: missing ${path}`);
    }
    for (const file of generator.envs ?? []) {
      const lines = readFileSync(join(dir, file), "utf8").split("\n");
      envKeys.push(...lines.filter((l) => l.trim() && !l.startsWith("#")).map((l) => l.split("=")[0]));
    }
    envKeys.push(...(generator.literals ?? []).map((l) => l.split("=")[0]));
    configMaps.set(generator.name, { envKeys: [...new Set(envKeys)] });
  }
  for (const { path: file } of kustomization.patches ?? []) {
    const patch = parse(readFileSync(join(dir, file), "utf8"));
    const i = objects.findIndex(({ object }) => object.kind === patch.kind &&
                                                object.metadata?.name === patch.metadata?.name);
    if (i < 0) {
      errors.push(`${relative(root, join(dir, file))}: patches no ${patch.kind} ${patch.metadata?.name}`);
    } else if (patch.$patch === "delete") {
      objects.splice(i, 1);
    } else {
      mergePatch(objects[i].object, patch);
    }
  }
  return { objects, configMaps };
}

// kubectl's kustomize (when installed) must build the same objects as build(): the generated
// ConfigMaps aside, and with their content-hash suffixes and the `images:` edits undone.
function crossCheck(dir, objects, configMaps) {
  let output;
  try {
    output = execFileSync("kubectl", ["kustomize", dir], { encoding: "utf8", stdio: "pipe" });
  } catch (error) {
    if (error.code !== "ENOENT") errors.push(`kubectl kustomize ${dir}: ${error.stderr}`);
    return;
  }
  const hashed = new RegExp(`^(${[...configMaps.keys()].join("|")})-[a-z0-9]{10}$`);
  const normalize = (value, key) => {
    if (key === "image") return "";
    if (typeof value === "string") return value.replace(hashed, "$1");
    if (Array.isArray(value)) return value.map((v) => normalize(v));
    if (isObject(value)) {
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, normalize(v, k)]));
    }
    return value;
  };
  const name = (o) => `${o.kind} ${o.metadata?.name}`;
  const theirs = parseAllDocuments(output).map((d) => d.toJS())
    .filter((o) => o && !(o.kind === "ConfigMap" && hashed.test(o.metadata.name)));
  const mine = new Map(objects.map(({ object }) => [name(object), normalize(object)]));
  for (const object of theirs) {
    if (!isDeepStrictEqual(mine.get(name(object)), normalize(object))) {
      errors.push(`${name(object)}: kubectl kustomize builds it differently from validate_k8s.mjs`);
    }
    mine.delete(name(object));
  }
  for (const extra of mine.keys()) errors.push(`${extra}: kubectl kustomize does not build it`);
}

const dir = process.argv[2];
const { objects, configMaps } = build(dir);
crossCheck(dir, objects, configMaps);
const defined = { ConfigMap: new Set(configMaps.keys()), PersistentVolumeClaim: new Set() };
const workloads = [];

for (const { file, object } of objects) {
  const where = `${file}: ${object.kind} ${object.metadata?.name}`;
  const validate = await validatorFor(object.apiVersion, object.kind);
  if (!validate) {
    errors.push(`${where}: no schema for ${object.apiVersion} ${object.kind}`);
    continue;
  }
  try {
    validate(object);
    console.log(`ok   ${where}`);
  } catch (error) {
    errors.push(`${where}: ${error.message}`);
  }
  if (object.metadata?.namespace) errors.push(`${where}: sets a namespace (keep manifests namespace-agnostic)`);
  if (defined[object.kind]) defined[object.kind].add(object.metadata.name);
  if (object.kind === "Deployment") workloads.push([where, object.spec.template.spec]);
}

// Names a pod spec refers to must exist in the kustomization.
for (const [where, pod] of workloads) {
  const refs = [];
  for (const volume of pod.volumes ?? []) {
    if (volume.configMap) refs.push(["ConfigMap", volume.configMap.name]);
    if (volume.persistentVolumeClaim) refs.push(["PersistentVolumeClaim", volume.persistentVolumeClaim.claimName]);
  }
  for (const container of [...(pod.initContainers ?? []), ...pod.containers]) {
    const vars = new Set((container.env ?? []).map((e) => e.name));
    const fromFiles = [];
    for (const source of container.envFrom ?? []) {
      if (!source.configMapRef) continue;
      refs.push(["ConfigMap", source.configMapRef.name]);
      for (const key of configMaps.get(source.configMapRef.name)?.envKeys ?? []) {
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
