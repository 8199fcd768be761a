//! Pods as the store holds and writes them: a full `v1 Pod` the size and shape of a Deployment's
//! pod on a real cluster (about 7 KiB of JSON: owner reference to its ReplicaSet,
//! `generateName`, labels, managed fields; two containers with env, ports, resources and probes;
//! volumes with the `kube-api-access-xxxxx` projected token volume; a Running status with
//! conditions, IPs and container statuses). What all pods share (spec, managed fields) is held
//! once in a [`PodShape`], what the pods of one ReplicaSet share (owner, labels) in a
//! [`PodTemplate`]; a pod itself holds its name, uid, service account, node and IP.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::state::{fast_uuid, to_map, Body, StoredObject};

/// Where the kubelet mounts a projected service-account token.
const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Characters of generated name suffixes, as the API server picks them (no vowels, no look-alikes).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// What pods of any namespace share: the bulk of their JSON.
#[derive(Debug)]
pub(super) struct PodShape {
    /// The spec without what differs between pods (service account, node, token volume).
    spec: Map<String, Value>,
    /// Name, image and image ID of each container, for `status.containerStatuses`.
    images: Vec<(String, String, String)>,
    annotations: Arc<BTreeMap<String, String>>,
    managed_fields: Arc<Value>,
}

/// What the pods of one ReplicaSet share.
#[derive(Debug)]
pub(super) struct PodTemplate {
    /// `metadata.generateName` (none for a name without a `-`).
    generate_name: Option<String>,
    /// `metadata.ownerReferences`: the ReplicaSet.
    owner_references: Value,
    labels: Arc<BTreeMap<String, String>>,
    shape: Arc<PodShape>,
}

/// What a pod holds beyond the common metadata (small fixed-size parts where it can: a million
/// seeded pods each hold this).
#[derive(Clone, Debug)]
pub(super) struct PodBody {
    template: Arc<PodTemplate>,
    service_account: String,
    node: String,
    /// Its address in the pod network `10.244.0.0/16`.
    pod_ip: u16,
    /// The random part of its `kube-api-access-xxxxx` volume's name.
    access_suffix: [u8; 5],
}

/// The `generateName` a pod called `name` was created with: everything up to its last `-`.
pub(super) fn generate_name_of(name: &str) -> Option<&str> {
    name.rfind('-').map(|i| &name[..=i])
}

/// A random name suffix of five characters from the API server's alphabet.
fn random_suffix() -> [u8; 5] {
    std::array::from_fn(|_| SUFFIX_ALPHABET[fastrand::usize(..SUFFIX_ALPHABET.len())])
}

/// A stable 10-character hash of `text` in the suffix alphabet (for `pod-template-hash`).
fn template_hash(text: &str) -> String {
    // FNV-1a: any stable spread will do.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..10)
        .map(|i| {
            let digit = (h >> (i * 6)) as usize % SUFFIX_ALPHABET.len();
            char::from(SUFFIX_ALPHABET[digit])
        })
        .collect()
}

/// The first address of a node (`10.0.0.N`, N from its name), for `status.hostIP`.
fn node_ip(node: &str) -> String {
    let n = node
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31) + u32::from(b));
    format!("10.0.0.{}", n % 250 + 2)
}

/// An env var that reads a field of the pod.
fn field_env(name: &str, path: &str) -> Value {
    json!({ "name": name, "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": path } } })
}

/// An HTTP probe on `path` of the `http` port.
fn http_probe(path: &str, period: u64) -> Value {
    json!({
        "httpGet": { "path": path, "port": "http", "scheme": "HTTP" },
        "initialDelaySeconds": 5,
        "timeoutSeconds": 1,
        "periodSeconds": period,
        "successThreshold": 1,
        "failureThreshold": 3,
    })
}

/// The application container of a workload.
fn app_container(image: &str) -> Value {
    json!({
        "name": "app",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["--config=/etc/workload/config.yaml", "--log-format=json"],
        "env": [
            { "name": "NATS_URL", "value": "tls://nats.nats.svc.cluster.local:4222" },
            { "name": "LOG_LEVEL", "value": "info" },
            field_env("NATS_SUBJECT_PREFIX", "metadata.namespace"),
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_IP", "status.podIP"),
            { "name": "GOMAXPROCS", "valueFrom": { "resourceFieldRef": {
                "containerName": "app", "resource": "limits.cpu", "divisor": "1" } } },
        ],
        "ports": [
            { "name": "http", "containerPort": 8080, "protocol": "TCP" },
            { "name": "metrics", "containerPort": 9090, "protocol": "TCP" },
        ],
        "resources": {
            "limits": { "cpu": "1", "memory": "256Mi" },
            "requests": { "cpu": "100m", "memory": "128Mi" },
        },
        "livenessProbe": http_probe("/healthz", 10),
        "readinessProbe": http_probe("/readyz", 5),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": { "drop": ["ALL"] },
            "readOnlyRootFilesystem": true,
        },
        "volumeMounts": [
            { "name": "config", "mountPath": "/etc/workload", "readOnly": true },
            { "name": "tmp", "mountPath": "/tmp" },
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    })
}

/// The log-shipping sidecar.
fn sidecar_container(image: &str) -> Value {
    json!({
        "name": "log-shipper",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["--config=/fluent-bit/etc/fluent-bit.yaml"],
        "env": [field_env("NODE_NAME", "spec.nodeName")],
        "ports": [{ "name": "shipper-http", "containerPort": 2020, "protocol": "TCP" }],
        "resources": {
            "limits": { "memory": "64Mi" },
            "requests": { "cpu": "10m", "memory": "32Mi" },
        },
        "volumeMounts": [{ "name": "tmp", "mountPath": "/var/log/workload", "readOnly": true }],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    })
}

/// The managed fields of a Deployment's pod: the ReplicaSet controller's create and the
/// kubelet's status updates (abridged to their top-level fields, as sizes go).
fn pod_managed_fields(created: &str) -> Value {
    let container = |name: &str| {
        json!({ format!("k:{{\"name\":\"{name}\"}}"): {
            ".": {}, "f:args": {}, "f:env": {}, "f:image": {}, "f:imagePullPolicy": {},
            "f:name": {}, "f:ports": {}, "f:resources": {}, "f:terminationMessagePath": {},
            "f:terminationMessagePolicy": {}, "f:volumeMounts": {},
        }})
    };
    let mut containers = Map::new();
    for name in ["app", "log-shipper"] {
        if let Value::Object(c) = container(name) {
            containers.extend(c);
        }
    }
    json!([
        {
            "manager": "kube-controller-manager",
            "operation": "Update",
            "apiVersion": "v1",
            "time": created,
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {
                    "f:annotations": { ".": {}, "f:prometheus.io/port": {}, "f:prometheus.io/scrape": {} },
                    "f:generateName": {},
                    "f:labels": {
                        ".": {}, "f:app.kubernetes.io/name": {}, "f:app.kubernetes.io/part-of": {},
                        "f:pod-template-hash": {},
                    },
                    "f:ownerReferences": { ".": {}, "k:{\"uid\"}": {} },
                },
                "f:spec": {
                    "f:containers": containers,
                    "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {},
                    "f:schedulerName": {}, "f:securityContext": {}, "f:serviceAccount": {},
                    "f:serviceAccountName": {}, "f:terminationGracePeriodSeconds": {},
                    "f:volumes": {
                        ".": {}, "k:{\"name\":\"config\"}": {}, "k:{\"name\":\"tmp\"}": {},
                    },
                },
            },
        },
        {
            "manager": "kubelet",
            "operation": "Update",
            "apiVersion": "v1",
            "time": created,
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:status": {
                    "f:conditions": {
                        "k:{\"type\":\"ContainersReady\"}": {}, "k:{\"type\":\"Initialized\"}": {},
                        "k:{\"type\":\"PodReadyToStartContainers\"}": {},
                        "k:{\"type\":\"Ready\"}": {},
                    },
                    "f:containerStatuses": {}, "f:hostIP": {}, "f:hostIPs": {}, "f:phase": {},
                    "f:podIP": {}, "f:podIPs": {}, "f:startTime": {},
                },
            },
            "subresource": "status",
        },
    ])
}

impl PodShape {
    /// The shared bulk of pods created at `created` (the time of their managed fields).
    pub(super) fn new(created: &str) -> Arc<PodShape> {
        let image = "registry.example.com/platform/workload:1.4.2".to_string();
        let sidecar = "cr.fluentbit.io/fluent/fluent-bit:3.2.4".to_string();
        let digest = |image: &str| format!("{image}@sha256:{}", template_hash(image).repeat(6));
        let spec = json!({
            "containers": [app_container(&image), sidecar_container(&sidecar)],
            "volumes": [
                { "name": "config", "configMap": { "name": "workload-config", "defaultMode": 420 } },
                { "name": "tmp", "emptyDir": { "sizeLimit": "64Mi" } },
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "fsGroup": 65532,
                "seccompProfile": { "type": "RuntimeDefault" },
            },
            "schedulerName": "default-scheduler",
            "tolerations": [
                { "key": "node.kubernetes.io/not-ready", "operator": "Exists",
                  "effect": "NoExecute", "tolerationSeconds": 300 },
                { "key": "node.kubernetes.io/unreachable", "operator": "Exists",
                  "effect": "NoExecute", "tolerationSeconds": 300 },
            ],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
        });
        let spec = match spec {
            Value::Object(spec) => spec,
            _ => Map::new(),
        };
        let annotations = to_map(&[
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", "9090"),
        ]);
        Arc::new(PodShape {
            images: vec![
                ("app".into(), image.clone(), digest(&image)),
                ("log-shipper".into(), sidecar.clone(), digest(&sidecar)),
            ],
            spec,
            annotations: Arc::new(annotations),
            managed_fields: Arc::new(pod_managed_fields(created)),
        })
    }
}

impl PodTemplate {
    /// The shared parts of the pods named `generate_name…` in `namespace` (their ReplicaSet is
    /// `generate_name` without the trailing `-`, or `name` when there is none).
    pub(super) fn new(namespace: &str, name: &str, shape: &Arc<PodShape>) -> Arc<PodTemplate> {
        let generate_name = generate_name_of(name).map(str::to_owned);
        let replica_set = generate_name
            .as_deref()
            .map_or(name, |g| g.trim_end_matches('-'));
        let hash = template_hash(&format!("{namespace}/{replica_set}"));
        let owner_references = json!([{
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": replica_set,
            "uid": fast_uuid(),
            "controller": true,
            "blockOwnerDeletion": true,
        }]);
        let labels = to_map(&[
            ("app.kubernetes.io/name", replica_set),
            ("app.kubernetes.io/part-of", namespace),
            ("pod-template-hash", &hash),
        ]);
        Arc::new(PodTemplate {
            generate_name,
            owner_references,
            labels: Arc::new(labels),
            shape: Arc::clone(shape),
        })
    }

    /// A pod of this template, not yet stored (resourceVersion 0).
    pub(super) fn pod(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
        service_account: &str,
        node: &str,
        created: &str,
    ) -> StoredObject {
        StoredObject {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: fast_uuid(),
            resource_version: 0,
            created: created.to_string(),
            labels: Arc::clone(&self.labels),
            annotations: Arc::clone(&self.shape.annotations),
            managed_fields: Some(Arc::clone(&self.shape.managed_fields)),
            deletion: None,
            body: Body::Pod(Box::new(PodBody {
                template: Arc::clone(self),
                service_account: service_account.to_string(),
                node: node.to_string(),
                pod_ip: fastrand::u16(1..),
                access_suffix: random_suffix(),
            })),
        }
    }
}

impl PodBody {
    /// The name of its projected token volume.
    fn access_volume(&self) -> String {
        let suffix: String = self.access_suffix.iter().map(|b| char::from(*b)).collect();
        format!("kube-api-access-{suffix}")
    }

    /// Its IP address.
    fn pod_ip(&self) -> String {
        let [high, low] = self.pod_ip.to_be_bytes();
        format!("10.244.{high}.{}", low.max(1))
    }

    /// Adds the metadata only pods have: `generateName` and the owner reference.
    pub(super) fn add_metadata(&self, meta: &mut Map<String, Value>) {
        if let Some(g) = &self.template.generate_name {
            meta.insert("generateName".into(), json!(g));
        }
        meta.insert(
            "ownerReferences".into(),
            self.template.owner_references.clone(),
        );
    }

    /// The pod's `spec`.
    pub(super) fn spec(&self) -> Value {
        let mut spec = self.template.shape.spec.clone();
        let access_volume = self.access_volume();
        let mount = json!({ "name": access_volume, "readOnly": true,
                            "mountPath": TOKEN_MOUNT_PATH });
        if let Some(Value::Array(containers)) = spec.get_mut("containers") {
            for container in containers {
                if let Some(Value::Array(mounts)) = container.get_mut("volumeMounts") {
                    mounts.push(mount.clone());
                }
            }
        }
        if let Some(Value::Array(volumes)) = spec.get_mut("volumes") {
            volumes.push(json!({
                "name": access_volume,
                "projected": {
                    "defaultMode": 420,
                    "sources": [
                        { "serviceAccountToken": { "expirationSeconds": 3607, "path": "token" } },
                        { "configMap": { "name": "kube-root-ca.crt",
                                         "items": [{ "key": "ca.crt", "path": "ca.crt" }] } },
                        { "downwardAPI": { "items": [{ "path": "namespace", "fieldRef": {
                            "apiVersion": "v1", "fieldPath": "metadata.namespace" } }] } },
                    ],
                },
            }));
        }
        spec.insert("serviceAccountName".into(), json!(self.service_account));
        spec.insert("serviceAccount".into(), json!(self.service_account));
        spec.insert("nodeName".into(), json!(self.node));
        Value::Object(spec)
    }

    /// The pod's `status`: Running and Ready since it was created.
    pub(super) fn status(&self, uid: &str, created: &str) -> Value {
        let condition = |kind: &str| {
            json!({ "type": kind, "status": "True", "lastProbeTime": null,
                    "lastTransitionTime": created })
        };
        let hex: String = uid.chars().filter(|c| *c != '-').collect();
        let statuses: Vec<Value> = self
            .template
            .shape
            .images
            .iter()
            .enumerate()
            .map(|(i, (name, image, image_id))| {
                json!({
                    "name": name,
                    "state": { "running": { "startedAt": created } },
                    "lastState": {},
                    "ready": true,
                    "restartCount": 0,
                    "image": image,
                    "imageID": image_id,
                    "containerID": format!("containerd://{hex}{i:032x}"),
                    "started": true,
                })
            })
            .collect();
        let (host_ip, pod_ip) = (node_ip(&self.node), self.pod_ip());
        json!({
            "phase": "Running",
            "conditions": [
                condition("PodReadyToStartContainers"),
                condition("Initialized"),
                condition("Ready"),
                condition("ContainersReady"),
                condition("PodScheduled"),
            ],
            "hostIP": host_ip,
            "hostIPs": [{ "ip": host_ip }],
            "podIP": pod_ip,
            "podIPs": [{ "ip": pod_ip }],
            "startTime": created,
            "containerStatuses": statuses,
            "qosClass": "Burstable",
        })
    }
}
