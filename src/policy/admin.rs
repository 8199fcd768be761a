//! The admin policy (`POLICY_FILE`): which namespaces are served, which account each is placed
//! in, and what ServiceAccount annotations may grant there. Read from YAML in two stages: the
//! document as written, then a validated [`AdminPolicy`]; one error names every problem.

use std::cell::Cell;
use std::fmt;
use std::path::Path;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::subject::{glob_matches, is_valid_subject};

/// The placeholder for the ServiceAccount's namespace in annotation bounds.
pub const NAMESPACE_PLACEHOLDER: &str = "{namespace}";
/// The placeholder for the ServiceAccount's name (every `.` turned into `_`) in annotation bounds.
pub const NAME_PLACEHOLDER: &str = "{name}";
/// The name of nats-server's system account when its configuration names none: clients placed
/// there read the answers to operators' `$SYS` requests on `_INBOX.…`.
pub const SYSTEM_ACCOUNT: &str = "$SYS";
/// Longest policy file read.
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;

/// How much the policy's strings and rules may add up to once its YAML aliases are expanded:
/// each string costs its length plus one, each rule [`RULE_COST`]. Written out, every string
/// and rule takes at least that many bytes of the file, so only aliases that repeat content
/// beyond twice the largest file read are refused. Without a bound, a few hundred kilobytes of
/// aliases (an alias of a rule whose namespaces alias a long list, repeated) expand to
/// gigabytes: a ConfigMap edit would take the service down at start or at the next re-read.
const MAX_EXPANDED_COST: usize = 2 * MAX_POLICY_BYTES as usize;
/// What one rule costs, besides its strings (`- namespaces: []` is 17 bytes).
const RULE_COST: usize = 16;

thread_local! {
    /// What is left of [`MAX_EXPANDED_COST`] for the document being read on this thread.
    static EXPANSION_LEFT: Cell<usize> = const { Cell::new(MAX_EXPANDED_COST) };
}

/// A value of the policy whose cost is charged as it is read (see [`MAX_EXPANDED_COST`]).
#[derive(Debug)]
struct Charged<T>(T);

/// The cost of a value of the policy.
trait Cost {
    fn cost(&self) -> usize;
}

impl Cost for String {
    fn cost(&self) -> usize {
        self.len() + 1
    }
}

impl Cost for RawRule {
    fn cost(&self) -> usize {
        RULE_COST
    }
}

impl<'de, T: Deserialize<'de> + Cost> Deserialize<'de> for Charged<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = T::deserialize(deserializer)?;
        EXPANSION_LEFT.with(|left| match left.get().checked_sub(value.cost()) {
            Some(rest) => {
                left.set(rest);
                Ok(Charged(value))
            }
            None => Err(D::Error::custom(format!(
                "its aliases expand it beyond {MAX_EXPANDED_COST} bytes of entries; write the entries out"
            ))),
        })
    }
}

/// The values of a list of charged values.
fn uncharged<T>(list: Vec<Charged<T>>) -> Vec<T> {
    list.into_iter().map(|c| c.0).collect()
}

/// A field that tells "written without a value" (`Some(None)`: YAML null, as when every entry
/// under a key is commented out) from "not written" (`None`, with `#[serde(default)]`).
fn written<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// The policy as written: every field optional, unknown fields refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    namespaces: Option<RawNamespaces>,
    #[serde(default)]
    annotations: Option<RawBounds>,
    #[serde(default)]
    rules: Option<Vec<Charged<RawRule>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamespaces {
    #[serde(default, deserialize_with = "written")]
    include: Option<Option<Vec<Charged<String>>>>,
    #[serde(default)]
    exclude: Option<Vec<Charged<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBounds {
    #[serde(default)]
    publish: Option<Vec<Charged<String>>>,
    #[serde(default)]
    subscribe: Option<Vec<Charged<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    namespaces: Vec<Charged<String>>,
    #[serde(default, deserialize_with = "written")]
    account: Option<Option<Charged<String>>>,
    #[serde(default)]
    annotations: Option<RawBounds>,
}

/// What annotations may grant: every entry must lie within one of these subject patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bounds {
    /// No policy file: anything but the reserved subjects.
    Unbounded,
    /// Within these patterns (`{namespace}` and `{name}` substituted); none: nothing.
    Within {
        /// Patterns for publish entries.
        publish: Vec<String>,
        /// Patterns for subscribe entries.
        subscribe: Vec<String>,
    },
}

/// One rule: the namespaces it applies to, the account it places them in, its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Namespace globs.
    pub namespaces: Vec<String>,
    /// The account these ServiceAccounts are placed in; `None`: the default account.
    pub account: Option<String>,
    /// What annotations may grant in these namespaces.
    pub bounds: Bounds,
}

/// Which part of the policy governs a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Governance {
    /// There is no policy file.
    NoPolicy,
    /// The policy's top-level `annotations` (no rule matched).
    Defaults,
    /// `rules[index]`, the first rule whose namespaces match.
    Rule(usize),
}

impl fmt::Display for Governance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Governance::NoPolicy => f.write_str("no policy file"),
            Governance::Defaults => f.write_str("the policy's top-level annotations"),
            Governance::Rule(i) => write!(f, "rules[{i}]"),
        }
    }
}

/// Where a served namespace stands under the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement<'a> {
    /// The part of the policy that decided.
    pub governance: Governance,
    /// The account to place the ServiceAccount in; `None`: the default account.
    pub account: Option<&'a str>,
    /// What its annotations may grant.
    pub bounds: &'a Bounds,
}

/// Why a namespace is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotServed {
    /// No `include` glob matches it.
    NotIncluded,
    /// This `exclude` glob matches it.
    Excluded(String),
}

impl fmt::Display for NotServed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotServed::NotIncluded => f.write_str("no namespaces.include pattern matches it"),
            NotServed::Excluded(p) => write!(f, "namespaces.exclude pattern {p:?} matches it"),
        }
    }
}

/// The validated admin policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPolicy {
    include: Vec<String>,
    exclude: Vec<String>,
    defaults: Bounds,
    rules: Vec<Rule>,
}

/// Why a policy file was refused: every problem found, each naming where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy {path}:\n  - {}", .problems.join("\n  - "))]
pub struct PolicyError {
    /// The file, for the message.
    pub path: String,
    /// One line per problem.
    pub problems: Vec<String>,
}

impl AdminPolicy {
    /// The policy without a policy file: every namespace served, annotations bounded only by the
    /// reserved subjects, every ServiceAccount in the default account.
    pub fn unrestricted() -> AdminPolicy {
        AdminPolicy {
            include: vec!["*".to_owned()],
            exclude: Vec::new(),
            defaults: Bounds::Unbounded,
            rules: Vec::new(),
        }
    }

    /// Whether this is the policy of no policy file.
    pub fn is_unrestricted(&self) -> bool {
        self.defaults == Bounds::Unbounded
    }

    /// Reads and validates the policy file at `path`.
    pub fn load(path: &Path) -> Result<AdminPolicy, PolicyError> {
        let shown = path.display().to_string();
        let refused = |problem: String| PolicyError {
            path: shown.clone(),
            problems: vec![problem],
        };
        let bytes = crate::files::read_bounded(path, MAX_POLICY_BYTES)
            .map_err(|e| refused(format!("cannot read it: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| refused("it is not UTF-8".into()))?;
        AdminPolicy::parse(&text).map_err(|problems| PolicyError {
            path: shown,
            problems,
        })
    }

    /// Parses and validates policy YAML; the error lists every problem.
    pub fn parse(text: &str) -> Result<AdminPolicy, Vec<String>> {
        let raw: RawPolicy = if text.trim().is_empty() {
            RawPolicy::default()
        } else {
            EXPANSION_LEFT.with(|left| left.set(MAX_EXPANDED_COST));
            serde_yaml_ng::from_str(text)
                .map_err(|e| vec![format!("not a policy document: {e}")])?
        };
        let mut problems = Vec::new();
        let namespaces = raw.namespaces.unwrap_or_default();
        let include = match namespaces.include {
            None => vec!["*".to_owned()],
            Some(Some(globs)) => uncharged(globs),
            Some(None) => {
                // Omitted means every namespace; a key left without its entries does not.
                problems.push(
                    "namespaces.include has no value: list the served namespaces ([] for none), or leave the key out to serve every namespace"
                        .to_owned(),
                );
                Vec::new()
            }
        };
        let exclude = namespaces.exclude.map(uncharged).unwrap_or_default();
        check_globs("namespaces.include", &include, &mut problems);
        check_globs("namespaces.exclude", &exclude, &mut problems);
        let defaults = bounds("annotations", raw.annotations, &mut problems);
        let mut rules = Vec::new();
        for (i, Charged(rule)) in raw.rules.unwrap_or_default().into_iter().enumerate() {
            let at = format!("rules[{i}]");
            let namespaces = uncharged(rule.namespaces);
            let account = match rule.account {
                None => None,
                Some(Some(Charged(account))) => Some(account),
                Some(None) => {
                    // Not the default account: that would join these namespaces to all others.
                    problems.push(format!(
                        "{at}.account has no value: name the account, or leave the key out for the default one"
                    ));
                    None
                }
            };
            if namespaces.is_empty() {
                problems.push(format!(
                    "{at}.namespaces is empty: the rule would match nothing"
                ));
            }
            check_globs(&format!("{at}.namespaces"), &namespaces, &mut problems);
            if let Some(account) = &account {
                if !is_valid_account_name(account) {
                    problems.push(format!(
                        "{at}.account {account:?} is not an account name (no spaces, control characters or dots; at most 256 characters)"
                    ));
                } else if account == SYSTEM_ACCOUNT {
                    problems.push(format!(
                        "{at}.account {account:?} is nats-server's system account: clients placed there read the answers to operators' $SYS requests"
                    ));
                }
            }
            let bounds = bounds(
                &format!("{at}.annotations"),
                rule.annotations,
                &mut problems,
            );
            rules.push(Rule {
                namespaces,
                account,
                bounds,
            });
        }
        if problems.is_empty() {
            Ok(AdminPolicy {
                include,
                exclude,
                defaults,
                rules,
            })
        } else {
            Err(problems)
        }
    }

    /// Where `namespace` stands: the first matching rule, or the defaults; an error when the
    /// namespace is not served.
    pub fn place(&self, namespace: &str) -> Result<Placement<'_>, NotServed> {
        if !self.include.iter().any(|p| glob_matches(p, namespace)) {
            return Err(NotServed::NotIncluded);
        }
        if let Some(p) = self.exclude.iter().find(|p| glob_matches(p, namespace)) {
            return Err(NotServed::Excluded(p.clone()));
        }
        if self.is_unrestricted() {
            return Ok(Placement {
                governance: Governance::NoPolicy,
                account: None,
                bounds: &self.defaults,
            });
        }
        Ok(self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.namespaces.iter().any(|p| glob_matches(p, namespace)))
            .map_or(
                Placement {
                    governance: Governance::Defaults,
                    account: None,
                    bounds: &self.defaults,
                },
                |(i, r)| Placement {
                    governance: Governance::Rule(i),
                    account: r.account.as_deref(),
                    bounds: &r.bounds,
                },
            ))
    }

    /// The accounts the rules name, for start-up checks and logs.
    pub fn accounts(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().filter_map(|r| r.account.as_deref())
    }
}

/// Substitutes the placeholders of a bound pattern for one ServiceAccount: the namespace as is,
/// the name with every `.` turned into `_` (names cannot contain `_`, so no two accounts share a
/// substitution, and a dotted name cannot reach into another's subjects).
pub fn substitute(pattern: &str, namespace: &str, name: &str) -> String {
    pattern
        .replace(NAMESPACE_PLACEHOLDER, namespace)
        .replace(NAME_PLACEHOLDER, &name.replace('.', "_"))
}

fn bounds(at: &str, raw: Option<RawBounds>, problems: &mut Vec<String>) -> Bounds {
    let raw = raw.unwrap_or_default();
    let mut check = |field: &str, patterns: Option<Vec<Charged<String>>>| {
        let patterns = patterns.map(uncharged).unwrap_or_default();
        for (i, p) in patterns.iter().enumerate() {
            // A pattern is checked with sample values in its placeholders; any other brace is a
            // typo of one.
            let sample = substitute(p, "ns", "name");
            if sample.contains(['{', '}']) {
                problems.push(format!(
                    "{at}.{field}[{i}] {p:?} has an unknown placeholder (only {NAMESPACE_PLACEHOLDER} and {NAME_PLACEHOLDER})"
                ));
            } else if !is_valid_subject(&sample) {
                problems.push(format!(
                    "{at}.{field}[{i}] {p:?} is not a valid NATS subject"
                ));
            }
        }
        patterns
    };
    let publish = check("publish", raw.publish);
    let subscribe = check("subscribe", raw.subscribe);
    Bounds::Within { publish, subscribe }
}

fn check_globs(at: &str, globs: &[String], problems: &mut Vec<String>) {
    for (i, g) in globs.iter().enumerate() {
        let ok = !g.is_empty()
            && g.len() <= 63
            && g.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'*' | b'?')
            });
        if !ok {
            problems.push(format!(
                "{at}[{i}] {g:?} is not a namespace pattern (lowercase letters, digits, -, * and ?)"
            ));
        }
    }
}

fn is_valid_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
namespaces:
  include: ["*"]
  exclude: ["kube-system"]
annotations:
  publish: ["{namespace}.>"]
  subscribe: ["{namespace}.>"]
rules:
  - namespaces: ["payments", "shop-*"]
    account: PAYMENTS
    annotations:
      publish: ["{namespace}.>", "orders.>", "$JS.API.>", "$JS.ACK.orders.>"]
      subscribe: ["{namespace}.>", "orders.>"]
  - namespaces: ["batch-?"]
"#;

    #[test]
    fn the_documented_shape_is_read() {
        let p = AdminPolicy::parse(EXAMPLE).unwrap();
        assert!(!p.is_unrestricted());
        assert_eq!(
            p.place("kube-system"),
            Err(NotServed::Excluded("kube-system".into()))
        );
        let team = p.place("team-a").unwrap();
        assert_eq!(team.governance, Governance::Defaults);
        assert_eq!(team.account, None);
        let shop = p.place("shop-eu").unwrap();
        assert_eq!(shop.governance, Governance::Rule(0));
        assert_eq!(shop.account, Some("PAYMENTS"));
        match shop.bounds {
            Bounds::Within { publish, .. } => assert!(publish.contains(&"$JS.API.>".to_string())),
            Bounds::Unbounded => panic!("bounded"),
        }
        // A rule without annotations allows nothing beyond the defaults.
        let batch = p.place("batch-1").unwrap();
        assert_eq!(batch.governance, Governance::Rule(1));
        assert_eq!(
            batch.bounds,
            &Bounds::Within {
                publish: vec![],
                subscribe: vec![]
            }
        );
        assert_eq!(p.accounts().collect::<Vec<_>>(), ["PAYMENTS"]);
    }

    #[test]
    fn include_and_exclude_decide_which_namespaces_are_served() {
        let p = AdminPolicy::parse(
            "namespaces:\n  include: [\"team-*\", prod]\n  exclude: [\"team-x*\"]\n",
        )
        .unwrap();
        assert!(p.place("team-a").is_ok());
        assert!(p.place("prod").is_ok());
        assert_eq!(p.place("dev"), Err(NotServed::NotIncluded));
        assert_eq!(
            p.place("team-xy"),
            Err(NotServed::Excluded("team-x*".into()))
        );
        // Omitted annotations allow nothing in a policy file.
        assert_eq!(
            p.place("prod").unwrap().bounds,
            &Bounds::Within {
                publish: vec![],
                subscribe: vec![]
            }
        );
        // An empty file is a policy too: every namespace, nothing granted by annotations.
        let empty = AdminPolicy::parse("").unwrap();
        assert!(!empty.is_unrestricted());
        assert_eq!(empty.place("x").unwrap().governance, Governance::Defaults);
    }

    #[test]
    fn without_a_policy_file_everything_is_served_unbounded() {
        let p = AdminPolicy::unrestricted();
        let placed = p.place("any").unwrap();
        assert_eq!(placed.governance, Governance::NoPolicy);
        assert_eq!(placed.bounds, &Bounds::Unbounded);
        assert_eq!(placed.account, None);
    }

    #[test]
    fn every_problem_is_named_with_where_it_is() {
        let problems = AdminPolicy::parse(
            r#"
namespaces:
  include: ["Team-A", ""]
  exclude: ["kube_system"]
annotations:
  publish: ["{namespace}..x", "{nmspace}.>"]
  subscribe: ["a b"]
rules:
  - namespaces: []
    account: "my account"
    annotations:
      publish: ["orders.>.x"]
"#,
        )
        .unwrap_err();
        for needle in [
            "namespaces.include[0] \"Team-A\"",
            "namespaces.include[1] \"\"",
            "namespaces.exclude[0] \"kube_system\"",
            "annotations.publish[0] \"{namespace}..x\" is not a valid NATS subject",
            "annotations.publish[1] \"{nmspace}.>\" has an unknown placeholder",
            "annotations.subscribe[0] \"a b\"",
            "rules[0].namespaces is empty",
            "rules[0].account \"my account\"",
            "rules[0].annotations.publish[0] \"orders.>.x\"",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{needle} missing from {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 9, "{problems:#?}");
    }

    #[test]
    fn a_key_written_without_a_value_is_not_taken_for_an_omitted_one() {
        // Every include commented out: YAML reads null, which must not mean "omitted, so every
        // namespace", the widest reading of what is written.
        let e = AdminPolicy::parse("namespaces:\n  include:\n  # - team-a\n").unwrap_err();
        assert!(e[0].contains("namespaces.include has no value"), "{e:?}");
        assert!(AdminPolicy::parse("namespaces:\n  include: ~\n").is_err());
        // Nor must an account without a value place the rule's namespaces in the default one.
        let e =
            AdminPolicy::parse("rules:\n  - namespaces: [payments]\n    account:\n").unwrap_err();
        assert!(e[0].contains("rules[0].account has no value"), "{e:?}");
        // An empty list serves nothing; null elsewhere reads as what it is: nothing.
        let none = AdminPolicy::parse("namespaces:\n  include: []\n  exclude:\n").unwrap();
        assert_eq!(none.place("team-a"), Err(NotServed::NotIncluded));
        let p = AdminPolicy::parse("annotations:\n  publish:\nrules:\n").unwrap();
        assert_eq!(
            p.place("x").unwrap().bounds,
            &Bounds::Within {
                publish: vec![],
                subscribe: vec![]
            }
        );
    }

    #[test]
    fn the_system_account_is_not_an_account_for_clients() {
        // Placed there, a pod granted `_INBOX.>` reads the answers to operators' `$SYS`
        // requests (CONNZ lists every connection of the server): seen on nats-server 2.15.1.
        let e =
            AdminPolicy::parse("rules:\n  - namespaces: [a]\n    account: \"$SYS\"\n").unwrap_err();
        assert!(
            e[0].contains("rules[0].account \"$SYS\" is nats-server's system account"),
            "{e:?}"
        );
        assert!(AdminPolicy::parse("rules:\n  - namespaces: [a]\n    account: SYSTEM\n").is_ok());
    }

    #[test]
    fn unknown_fields_and_wrong_shapes_are_refused() {
        let e = AdminPolicy::parse("namespace:\n  include: [\"*\"]\n").unwrap_err();
        assert!(e[0].contains("unknown field `namespace`"), "{e:?}");
        let e = AdminPolicy::parse("rules:\n  - account: X\n").unwrap_err();
        assert!(e[0].contains("missing field `namespaces`"), "{e:?}");
        let e = AdminPolicy::parse("annotations: [a]\n").unwrap_err();
        assert!(e[0].contains("not a policy document"), "{e:?}");
    }

    #[test]
    fn aliases_cannot_expand_a_small_file_into_a_huge_policy() {
        // 14 KB of YAML: 2,000 rules, each an alias of one whose namespaces alias a list of
        // 2,000 globs, 4 million globs in all. 260 KB of the same took 3 GB and was killed.
        let list = vec!["a"; 2000].join(", ");
        let rules = vec!["*r"; 2000].join(", ");
        let text = format!(
            "namespaces:\n  exclude: &n [{list}]\nrules: [&r {{namespaces: *n}}, {rules}]\n"
        );
        let started = std::time::Instant::now();
        let e = AdminPolicy::parse(&text).unwrap_err();
        assert!(e[0].contains("aliases"), "{e:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Aliases that expand to no more than the file could hold written out are fine.
        let p = AdminPolicy::parse(
            "annotations: &a\n  publish: [\"orders.>\"]\nrules:\n  - namespaces: [x]\n    annotations: *a\n",
        )
        .unwrap();
        assert_eq!(p.place("x").unwrap().bounds, p.place("y").unwrap().bounds);
        // The largest file read, written out without aliases, is within the bound.
        let entries = (MAX_POLICY_BYTES as usize - 40) / 2;
        let text = format!("namespaces:\n  exclude: [{}a]\n", "a,".repeat(entries - 1));
        assert!(text.len() as u64 <= MAX_POLICY_BYTES);
        assert!(AdminPolicy::parse(&text).is_ok());
    }

    #[test]
    fn placeholders_take_the_namespace_and_the_name_with_dots_as_underscores() {
        assert_eq!(
            substitute("{namespace}.{name}.>", "team-a", "svc.v2"),
            "team-a.svc_v2.>"
        );
        assert_eq!(substitute("apps-{namespace}.x", "prod", "a"), "apps-prod.x");
    }

    #[test]
    fn a_file_is_read_and_its_errors_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, EXAMPLE).unwrap();
        assert!(AdminPolicy::load(&path).is_ok());
        std::fs::write(&path, "rules:\n  - namespaces: [\"A\"]\n").unwrap();
        let e = AdminPolicy::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("invalid policy {}:", path.display())),
            "{e}"
        );
        assert!(e.contains("rules[0].namespaces[0]"), "{e}");
        let e = AdminPolicy::load(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read it"), "{e}");
    }
}
