//! Checks every request body the driver can send against Firecracker's API
//! schema (`shared/data/firecracker/firecracker-api.yaml`, Swagger 2.0),
//! with a validator for the subset of Swagger the schema uses. Runs in CI
//! without a Firecracker binary. The schema is Firecracker's file, kept
//! beside the repository rather than copied into it: without it these tests
//! are reported as ignored, with the reason (build.rs, `bhatti_fc_schema`).

use std::path::PathBuf;

use serde_json::{json, Map, Value};

use super::rest::*;
use super::tests::spec;
use super::*;

/// Keywords the validator understands; any other in a schema it walks is
/// an error, so a constraint is never silently ignored.
const KNOWN: &[&str] = &[
    "$ref",
    "type",
    "required",
    "properties",
    "enum",
    "items",
    "minimum",
    "maximum",
    "additionalProperties",
    // Annotations without a constraint.
    "description",
    "default",
    "format",
    "readOnly",
    "example",
    "title",
];

fn schema_path() -> PathBuf {
    match std::env::var_os("BHATTI_FIRECRACKER_API_YAML") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/firecracker/firecracker-api.yaml"),
    }
}

/// YAML → JSON, with non-string mapping keys (`200:`) as strings.
fn to_json(v: serde_norway::Value) -> Value {
    use serde_norway::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                json!(i)
            } else if let Some(u) = n.as_u64() {
                json!(u)
            } else {
                json!(n.as_f64())
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(s) => Value::Array(s.into_iter().map(to_json).collect()),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match to_json(k) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                out.insert(key, to_json(v));
            }
            Value::Object(out)
        }
        Y::Tagged(t) => to_json(t.value),
    }
}

struct Schema {
    root: Value,
}

/// Path parameters: (name, value).
type PathParams = Vec<(String, String)>;

impl Schema {
    fn load() -> Schema {
        let path = schema_path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the Firecracker API schema {} is needed for these tests ({e}); \
                 it lives in ../shared/data/firecracker/ beside the repository, \
                 or set BHATTI_FIRECRACKER_API_YAML",
                path.display()
            )
        });
        let y: serde_norway::Value = serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
        let root = to_json(y);
        assert_eq!(
            root["swagger"],
            "2.0",
            "{}: not Swagger 2.0",
            path.display()
        );
        Schema { root }
    }

    /// The schema path template matching a concrete path (`/drives/root`
    /// → `/drives/{drive_id}`) and its path parameters.
    fn template(&self, path: &str) -> Option<(String, Vec<(String, String)>)> {
        let paths = self.root["paths"].as_object()?;
        let segs: Vec<&str> = path.split('/').collect();
        paths.keys().find_map(|t| {
            let tsegs: Vec<&str> = t.split('/').collect();
            if tsegs.len() != segs.len() {
                return None;
            }
            let mut params = Vec::new();
            for (ts, s) in tsegs.iter().zip(&segs) {
                if let Some(name) = ts.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                    if s.is_empty() {
                        return None;
                    }
                    params.push((name.to_string(), s.to_string()));
                } else if ts != s {
                    return None;
                }
            }
            Some((t.clone(), params))
        })
    }

    /// The operation (`paths[template][method]`) a request goes to.
    fn operation(&self, req: &ApiRequest) -> Result<(&Value, PathParams), String> {
        let (t, params) = self
            .template(&req.path)
            .ok_or_else(|| format!("{}: no such path in the schema", req.describe()))?;
        let op = &self.root["paths"][&t][req.method.as_str().to_ascii_lowercase()];
        if !op.is_object() {
            return Err(format!("{}: the schema has no such method", req.describe()));
        }
        Ok((op, params))
    }

    /// Validates a whole request: path, method, path parameters, body.
    fn check(&self, req: &ApiRequest) -> Result<(), String> {
        let (op, params) = self.operation(req)?;
        let empty = vec![];
        let declared = op["parameters"].as_array().unwrap_or(&empty);
        let body_param = declared.iter().find(|p| p["in"] == "body");
        for (name, value) in &params {
            if !declared
                .iter()
                .any(|p| p["in"] == "path" && p["name"] == name.as_str())
            {
                return Err(format!(
                    "{}: path parameter {name} undeclared",
                    req.describe()
                ));
            }
            // Firecracker wants the id in the path to match the body's.
            if let Some(b) = &req.body {
                if let Some(v) = b.get(name.as_str()) {
                    if v != value.as_str() {
                        return Err(format!(
                            "{}: {name} {v} differs from the path",
                            req.describe()
                        ));
                    }
                }
            }
        }
        match (body_param, &req.body) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(format!("{}: takes no body", req.describe())),
            (Some(p), None) if p["required"] == true => {
                Err(format!("{}: body required", req.describe()))
            }
            (Some(_), None) => Ok(()),
            (Some(p), Some(b)) => {
                let mut errs = Vec::new();
                self.validate(&p["schema"], b, "body", &mut errs);
                if errs.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{}: {}", req.describe(), errs.join("; ")))
                }
            }
        }
    }

    fn resolve<'a>(&'a self, schema: &'a Value, errs: &mut Vec<String>) -> Option<&'a Value> {
        match schema.get("$ref") {
            Some(Value::String(r)) => match r.strip_prefix("#/definitions/") {
                Some(name) if self.root["definitions"].get(name).is_some() => {
                    Some(&self.root["definitions"][name])
                }
                _ => {
                    errs.push(format!("unresolvable $ref {r}"));
                    None
                }
            },
            Some(other) => {
                errs.push(format!("bad $ref {other}"));
                None
            }
            None => Some(schema),
        }
    }

    fn validate(&self, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
        let Some(s) = self.resolve(schema, errs) else {
            return;
        };
        let Some(obj) = s.as_object() else {
            errs.push(format!("{at}: schema is not an object"));
            return;
        };
        for k in obj.keys() {
            if !KNOWN.contains(&k.as_str()) {
                errs.push(format!(
                    "{at}: schema keyword {k:?} not supported by the validator"
                ));
            }
        }
        if let Some(allowed) = obj.get("enum").and_then(Value::as_array) {
            if !allowed.contains(v) {
                errs.push(format!(
                    "{at}: {v} not one of {}",
                    Value::Array(allowed.clone())
                ));
            }
        }
        let ty = obj.get("type").and_then(Value::as_str);
        match ty {
            Some("object") | None if obj.contains_key("properties") || ty.is_some() => {
                let Some(m) = v.as_object() else {
                    errs.push(format!("{at}: expected an object, got {v}"));
                    return;
                };
                let props = obj.get("properties").and_then(Value::as_object);
                if let Some(req) = obj.get("required").and_then(Value::as_array) {
                    for r in req.iter().filter_map(Value::as_str) {
                        if !m.contains_key(r) {
                            errs.push(format!("{at}: required property {r:?} missing"));
                        }
                    }
                }
                for (k, val) in m {
                    match props.and_then(|p| p.get(k)) {
                        Some(ps) => self.validate(ps, val, &format!("{at}.{k}"), errs),
                        None => match obj.get("additionalProperties") {
                            Some(Value::Bool(true)) => {}
                            Some(ap @ Value::Object(_)) => {
                                self.validate(ap, val, &format!("{at}.{k}"), errs)
                            }
                            // Firecracker denies unknown fields; the schema
                            // only allows extras where it says so.
                            _ => errs.push(format!("{at}: unknown property {k:?}")),
                        },
                    }
                }
            }
            Some("string") if !v.is_string() => {
                errs.push(format!("{at}: expected a string, got {v}"));
            }
            Some("boolean") if !v.is_boolean() => {
                errs.push(format!("{at}: expected a boolean, got {v}"));
            }
            Some("string") | Some("boolean") => {}
            Some("integer") | Some("number") => {
                let n = if ty == Some("integer") {
                    v.as_i64()
                        .map(|i| i as f64)
                        .or(v.as_u64().map(|u| u as f64))
                } else {
                    v.as_f64()
                };
                match n {
                    None => errs.push(format!("{at}: expected an {}, got {v}", ty.unwrap_or(""))),
                    Some(n) => {
                        if let Some(min) = obj.get("minimum").and_then(Value::as_f64) {
                            if n < min {
                                errs.push(format!("{at}: {v} below the minimum {min}"));
                            }
                        }
                        if let Some(max) = obj.get("maximum").and_then(Value::as_f64) {
                            if n > max {
                                errs.push(format!("{at}: {v} above the maximum {max}"));
                            }
                        }
                    }
                }
            }
            Some("array") => {
                let Some(items) = v.as_array() else {
                    errs.push(format!("{at}: expected an array, got {v}"));
                    return;
                };
                let Some(item_schema) = obj.get("items") else {
                    errs.push(format!("{at}: array schema without items"));
                    return;
                };
                for (i, it) in items.iter().enumerate() {
                    self.validate(item_schema, it, &format!("{at}[{i}]"), errs);
                }
            }
            Some(other) => errs.push(format!("{at}: schema type {other:?} not supported")),
            // No type and no properties: only `enum` (checked above) or
            // nothing constrains the value.
            None => {}
        }
    }
}

/// Every request the driver can produce, over configurations with every
/// optional feature on and off.
fn driver_requests() -> Vec<ApiRequest> {
    let full = FirecrackerConfig {
        rate_limits: RateLimits {
            net_bandwidth_bytes: Some(12_500_000),
            net_burst_bytes: Some(10_000_000),
            disk_bandwidth_bytes: Some(100_000_000),
            disk_iops: Some(10_000),
        },
        balloon_stats_interval_s: 5,
        ..FirecrackerConfig::default()
    };
    let half = FirecrackerConfig {
        rate_limits: RateLimits {
            net_bandwidth_bytes: Some(1),
            disk_iops: Some(1),
            ..RateLimits::default()
        },
        ..FirecrackerConfig::default()
    };
    let bare = FirecrackerConfig {
        balloon: false,
        vsock: false,
        entropy: false,
        log_level: LogLevel::Off,
        ..FirecrackerConfig::default()
    };
    let mut out = Vec::new();
    for c in [&full, &half, &bare, &FirecrackerConfig::default()] {
        for (net, disks) in [(true, 3), (false, 0), (true, 0), (false, 1)] {
            let s = spec(net, disks);
            out.extend(boot_requests(&s, c));
            out.extend(restore_requests(&s, c, "/s/vm.snap", "/s/mem.snap"));
            out.extend(restore_requests(&s, c, "vm.snap", "mem.snap"));
        }
    }
    for kind in [SnapshotKind::Full, SnapshotKind::Diff] {
        out.push(snapshot_request(kind, "/s/vm.snap", "/s/mem.snap"));
        out.push(snapshot_request(
            kind,
            "fc.snap/vm.snap",
            "fc.snap/mem.diff",
        ));
    }
    out.push(ApiRequest::vm_state(VmRunState::Paused));
    out.push(ApiRequest::vm_state(VmRunState::Resumed));
    out.push(ApiRequest::balloon_update(0));
    out.push(ApiRequest::balloon_update(512));
    out.push(ApiRequest::instance_info());
    out
}

/// Each body type with every optional field set (and the enum variants the
/// driver does not use by default), so a field the driver may start using
/// is checked too.
fn all_optional_bodies() -> Vec<ApiRequest> {
    let bucket = TokenBucket {
        size: 1,
        one_time_burst: Some(2),
        refill_time: 3,
    };
    let limiter = RateLimiter {
        bandwidth: Some(bucket),
        ops: Some(bucket),
    };
    let mut out = vec![
        ApiRequest::logger(&Logger {
            log_path: Some("fc.log".into()),
            level: Some(LogLevel::Trace),
            show_level: Some(true),
            show_log_origin: Some(true),
        }),
        ApiRequest::logger(&Logger {
            log_path: None,
            level: None,
            show_level: None,
            show_log_origin: None,
        }),
        ApiRequest::metrics(&Metrics {
            metrics_path: "m".into(),
            emit_id: Some(true),
        }),
        ApiRequest::serial(&Serial {
            serial_out_path: None,
        }),
        ApiRequest::boot_source(&BootSource {
            kernel_image_path: "k".into(),
            boot_args: Some("console=ttyS0".into()),
            initrd_path: Some("i".into()),
        }),
        ApiRequest::boot_source(&BootSource {
            kernel_image_path: "k".into(),
            boot_args: None,
            initrd_path: None,
        }),
        ApiRequest::machine_config(&MachineConfig {
            vcpu_count: 32,
            mem_size_mib: 128,
            smt: Some(false),
            track_dirty_pages: false,
            huge_pages: Some(HugePages::TwoMiB),
        }),
        ApiRequest::machine_config(&MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: None,
            track_dirty_pages: true,
            huge_pages: Some(HugePages::Transparent),
        }),
        ApiRequest::entropy(&Entropy {
            rate_limiter: Some(limiter),
        }),
        ApiRequest::balloon(&Balloon {
            amount_mib: 0,
            deflate_on_oom: false,
            stats_polling_interval_s: Some(1),
            free_page_reporting: Some(true),
        }),
        ApiRequest::action(ActionType::FlushMetrics),
        ApiRequest::action(ActionType::SendCtrlAltDel),
        ApiRequest::snapshot_load(&SnapshotLoad {
            snapshot_path: "s".into(),
            mem_backend: MemoryBackend {
                backend_type: BackendType::Uffd,
                backend_path: "u".into(),
            },
            track_dirty_pages: Some(false),
            resume_vm: Some(false),
            network_overrides: Some(vec![]),
            vsock_override: Some(VsockOverride {
                uds_path: "v".into(),
            }),
            clock_realtime: Some(true),
        }),
        ApiRequest::snapshot_load(&SnapshotLoad {
            snapshot_path: "s".into(),
            mem_backend: MemoryBackend {
                backend_type: BackendType::File,
                backend_path: "m".into(),
            },
            track_dirty_pages: None,
            resume_vm: None,
            network_overrides: None,
            vsock_override: None,
            clock_realtime: None,
        }),
    ];
    for cache_type in [None, Some(CacheType::Unsafe), Some(CacheType::Writeback)] {
        for io_engine in [None, Some(IoEngine::Sync), Some(IoEngine::Async)] {
            out.push(ApiRequest::drive(&Drive {
                drive_id: "d".into(),
                path_on_host: "p".into(),
                is_root_device: false,
                is_read_only: true,
                cache_type,
                io_engine,
                rate_limiter: Some(limiter),
            }));
        }
    }
    out.push(ApiRequest::network_interface(&NetworkInterface {
        iface_id: "eth1".into(),
        host_dev_name: "tap1".into(),
        guest_mac: None,
        rx_rate_limiter: Some(RateLimiter::default()),
        tx_rate_limiter: None,
    }));
    out
}

#[test]
#[cfg_attr(
    not(bhatti_fc_schema),
    ignore = "needs Firecracker's API schema: ../shared/data/firecracker/firecracker-api.yaml beside the repository, or BHATTI_FIRECRACKER_API_YAML"
)]
fn every_driver_request_matches_the_schema() {
    let schema = Schema::load();
    let reqs = driver_requests();
    // Each kind of call the driver makes is covered.
    let kinds: std::collections::BTreeSet<String> = reqs
        .iter()
        .map(|r| {
            schema
                .template(&r.path)
                .map(|(t, _)| format!("{} {t}", r.method))
                .unwrap_or_else(|| r.describe())
        })
        .collect();
    for k in [
        "PUT /logger",
        "PUT /metrics",
        "PUT /serial",
        "PUT /boot-source",
        "PUT /drives/{drive_id}",
        "PUT /machine-config",
        "PUT /entropy",
        "PUT /balloon",
        "PATCH /balloon",
        "PUT /vsock",
        "PUT /network-interfaces/{iface_id}",
        "PUT /actions",
        "PATCH /vm",
        "PUT /snapshot/create",
        "PUT /snapshot/load",
        "GET /",
    ] {
        assert!(kinds.contains(k), "no request for {k}: {kinds:?}");
    }
    let errors: Vec<String> = reqs
        .iter()
        .chain(all_optional_bodies().iter())
        .filter_map(|r| schema.check(r).err())
        .collect();
    assert!(
        errors.is_empty(),
        "schema violations:\n{}",
        errors.join("\n")
    );
}

#[test]
#[cfg_attr(
    not(bhatti_fc_schema),
    ignore = "needs Firecracker's API schema: ../shared/data/firecracker/firecracker-api.yaml beside the repository, or BHATTI_FIRECRACKER_API_YAML"
)]
fn unknown_properties_are_rejected() {
    let schema = Schema::load();
    let mut checked = 0;
    for r in driver_requests().into_iter().chain(all_optional_bodies()) {
        let Some(Value::Object(mut body)) = r.body.clone() else {
            continue;
        };
        body.insert("bhatti_extra".into(), json!(1));
        let bad = ApiRequest {
            body: Some(Value::Object(body)),
            ..r.clone()
        };
        let e = schema.check(&bad).unwrap_err();
        assert!(e.contains("unknown property \"bhatti_extra\""), "{e}");
        checked += 1;
    }
    assert!(checked > 50, "{checked}");
    // Nested objects are closed too.
    let mut d = ApiRequest::drive(&Drive {
        drive_id: "d".into(),
        path_on_host: "p".into(),
        is_root_device: false,
        is_read_only: false,
        cache_type: None,
        io_engine: None,
        rate_limiter: Some(RateLimiter::default()),
    });
    d.body.as_mut().unwrap()["rate_limiter"]["burst"] = json!(1);
    assert!(schema
        .check(&d)
        .unwrap_err()
        .contains("body.rate_limiter: unknown property"));
}

#[test]
#[cfg_attr(
    not(bhatti_fc_schema),
    ignore = "needs Firecracker's API schema: ../shared/data/firecracker/firecracker-api.yaml beside the repository, or BHATTI_FIRECRACKER_API_YAML"
)]
fn the_validator_catches_wrong_bodies() {
    let schema = Schema::load();
    let boot = boot_requests(&spec(true, 1), &FirecrackerConfig::default());
    let find = |p: &str| boot.iter().find(|r| r.describe() == p).unwrap().clone();
    let with = |r: &ApiRequest, f: &dyn Fn(&mut Value)| {
        let mut r = r.clone();
        f(r.body.as_mut().unwrap());
        r
    };
    let expect = |r: ApiRequest, what: &str| {
        let e = schema.check(&r).expect_err(what);
        assert!(e.contains(what), "{e} (expected {what:?})");
    };
    let mc = find("PUT /machine-config");
    expect(
        with(&mc, &|b| {
            b.as_object_mut().unwrap().remove("vcpu_count");
        }),
        "required property \"vcpu_count\" missing",
    );
    expect(
        with(&mc, &|b| b["mem_size_mib"] = json!("512")),
        "expected an integer",
    );
    expect(
        with(&mc, &|b| b["vcpu_count"] = json!(0)),
        "below the minimum",
    );
    expect(
        with(&mc, &|b| b["vcpu_count"] = json!(33)),
        "above the maximum",
    );
    expect(
        with(&mc, &|b| b["vcpu_count"] = json!(1.5)),
        "expected an integer",
    );
    expect(with(&mc, &|b| b["huge_pages"] = json!("1G")), "not one of");
    expect(
        with(&mc, &|b| b["track_dirty_pages"] = json!("yes")),
        "expected a boolean",
    );
    expect(
        ApiRequest::patch("/vm", &json!({"state": "Stopped"})),
        "not one of",
    );
    expect(
        ApiRequest::put("/vsock", &json!({"guest_cid": 2, "uds_path": "v"})),
        "below the minimum",
    );
    let drive = find("PUT /drives/root");
    expect(
        with(&drive, &|b| {
            b["rate_limiter"] = json!({"bandwidth": {"size": -1, "refill_time": 1000}})
        }),
        "body.rate_limiter.bandwidth.size: -1 below the minimum",
    );
    expect(
        with(&drive, &|b| b["rate_limiter"] = json!({"ops": {"size": 1}})),
        "required property \"refill_time\" missing",
    );
    expect(
        with(&drive, &|b| b["drive_id"] = json!("other")),
        "differs from the path",
    );
    expect(
        ApiRequest::put(
            "/snapshot/load",
            &json!({"snapshot_path": "s", "network_overrides": [{"iface_id": "eth0"}]}),
        ),
        "body.network_overrides[0]: required property \"host_dev_name\" missing",
    );
    expect(
        ApiRequest::put(
            "/snapshot/load",
            &json!({"snapshot_path": "s", "network_overrides": {}}),
        ),
        "expected an array",
    );
    expect(
        ApiRequest::put("/no-such-thing", &json!({})),
        "no such path",
    );
    expect(
        ApiRequest::patch("/boot-source", &json!({})),
        "no such method",
    );
    expect(
        ApiRequest {
            body: None,
            ..find("PUT /actions")
        },
        "body required",
    );
    // And a correct body passes.
    schema.check(&mc).unwrap();
}
