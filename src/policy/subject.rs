//! NATS subjects as permissions see them: validity, the subjects only the defaults may grant,
//! whether one subject pattern lies within another, and the namespace globs of the admin policy.

use std::borrow::Cow;

/// Longest subject accepted in a permission.
const MAX_SUBJECT_LEN: usize = 512;

/// Checks that `subject` is a valid NATS subject for a permission: non-empty tokens without
/// whitespace, `*` only as a whole token, `>` only as the whole last token.
pub fn is_valid_subject(subject: &str) -> bool {
    if subject.is_empty() || subject.len() > MAX_SUBJECT_LEN {
        return false;
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    let last = tokens.len() - 1;
    tokens.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && !t.chars().any(|c| c.is_whitespace() || c.is_control())
            && (*t == "*" || !t.contains('*'))
            && (*t == ">" && i == last || !t.contains('>'))
    })
}

/// Whether `subject` could match a subject only the defaults may grant: inboxes, replies and the
/// system subjects. A wildcard first token (`>`, `*.>`, `*.x`) matches them too, so it is
/// reserved as well: granted, it would let one account read every other account's inbox.
pub fn is_reserved(subject: &str) -> bool {
    let first = subject.split('.').next().unwrap_or("");
    first.starts_with("_INBOX")
        || first.starts_with("_REPLY")
        || first == "$SYS"
        || first == "*"
        || first == ">"
}

/// Whether every subject that `inner` matches is also matched by `outer` (both valid subjects):
/// `orders.eu.*` lies within `orders.>` and within `orders.*.*`; `orders.*` does not lie within
/// `orders.eu.>`, nor `orders.>` within `orders.*.>` (it matches `orders.x`).
pub fn lies_within(inner: &str, outer: &str) -> bool {
    let mut inner = inner.split('.');
    let mut outer = outer.split('.');
    loop {
        match (inner.next(), outer.next()) {
            // `>` matches one or more tokens, whatever they are (wildcards included).
            (Some(_), Some(">")) => return true,
            // Only `>` covers `>`: any other token matches exactly one.
            (Some(">"), Some(_)) => return false,
            (Some("*"), Some(o)) => {
                if o != "*" {
                    return false;
                }
            }
            (Some(i), Some(o)) => {
                if o != "*" && o != i {
                    return false;
                }
            }
            (None, None) => return true,
            // One has more tokens than the other: the shorter cannot match the longer's subjects.
            (Some(_), None) | (None, Some(_)) => return false,
        }
    }
}

/// What a subscribe grant of `pattern` lets a client receive, as a pattern: nats-server checks a
/// subscription against the grants token by token, and a grant's last `*` also matches the
/// subscription's `>` there. So `orders.*` lets a client subscribe `orders.>` and receive
/// `orders.eu.new`: its reach is `orders.>`. Any other pattern reaches exactly what it matches.
pub fn subscribe_reach(pattern: &str) -> Cow<'_, str> {
    match pattern.strip_suffix('*') {
        Some(head) if head.is_empty() || head.ends_with('.') => Cow::Owned(format!("{head}>")),
        _ => Cow::Borrowed(pattern),
    }
}

/// Whether `name` matches the glob `pattern`: `*` is any run of characters (none included),
/// `?` exactly one, everything else itself.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    // Iterative matching with one backtrack point: the last `*` and where it started matching.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_valid_only_as_whole_tokens() {
        for ok in [
            "a",
            "a.b",
            "a.*",
            "*.b",
            "a.>",
            ">",
            "*",
            "a.*.>",
            "$JS.API.>",
            "a-b_c.d",
        ] {
            assert!(is_valid_subject(ok), "{ok}");
        }
        for bad in [
            "", ".", "a.", ".a", "a..b", "a.>.b", ">.a", "a>", "a*", "*a", "a b", "a\nb",
        ] {
            assert!(!is_valid_subject(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_pattern_lies_within_another_only_when_it_matches_nothing_more() {
        for (inner, outer) in [
            ("orders.eu.*", "orders.>"),
            ("orders.eu.*", "orders.*.*"),
            ("orders.eu.new", "orders.eu.new"),
            ("orders.>", "orders.>"),
            ("orders.*.>", "orders.>"),
            ("orders.eu.>", "orders.*.>"),
            ("a.b.c.d", ">"),
            ("*", "*"),
            ("$JS.API.STREAM.INFO.orders", "$JS.API.>"),
        ] {
            assert!(lies_within(inner, outer), "{inner} within {outer}");
        }
        for (inner, outer) in [
            ("orders.*", "orders.eu.>"),
            ("orders.>", "orders.*.>"),
            ("orders.>", "orders.*"),
            ("orders", "orders.>"),
            ("orders.eu", "orders.eu.new"),
            ("orders.eu.new", "orders.eu"),
            ("*.orders", "team-a.>"),
            (">", "team-a.>"),
            ("orders.*", "orders.eu"),
            ("ordersx.a", "orders.>"),
        ] {
            assert!(!lies_within(inner, outer), "{inner} not within {outer}");
        }
    }

    /// Every valid pattern of at most three tokens over `a`, `b`, `*` and `>`.
    fn small_patterns() -> Vec<String> {
        let mut all: Vec<Vec<&str>> = vec![vec![]];
        let mut out = Vec::new();
        for _ in 0..3 {
            let mut next = Vec::new();
            for p in &all {
                for t in ["a", "b", "*", ">"] {
                    let mut q = p.clone();
                    q.push(t);
                    out.push(q.join("."));
                    if t != ">" {
                        next.push(q);
                    }
                }
            }
            all = next;
        }
        out
    }

    /// Every subject of one to four tokens over `a`, `b` and `c` (`c` stands for any token the
    /// patterns do not name; four tokens tell `>` from `*` for patterns of three).
    fn small_subjects() -> Vec<Vec<&'static str>> {
        let mut all: Vec<Vec<&str>> = vec![vec![]];
        let mut out = Vec::new();
        for _ in 0..4 {
            let mut next = Vec::new();
            for s in &all {
                for t in ["a", "b", "c"] {
                    let mut q = s.clone();
                    q.push(t);
                    out.push(q.clone());
                    next.push(q);
                }
            }
            all = next;
        }
        out
    }

    /// NATS matching of a literal subject by a pattern, written plainly as the reference.
    fn matches(pattern: &[&str], subject: &[&str]) -> bool {
        match (pattern.split_first(), subject.split_first()) {
            (Some((&">", _)), Some(_)) => true,
            (Some((p, prest)), Some((s, srest))) => (*p == "*" || p == s) && matches(prest, srest),
            (None, None) => true,
            _ => false,
        }
    }

    /// How nats-server's permission check matches a subscription subject (wildcards included)
    /// against one grant: a grant's `*` takes any one token of the subscription, `*` and `>`
    /// included; its `>` takes the rest; its literal token only the same literal.
    fn server_allows(grant: &[&str], subscription: &[&str]) -> bool {
        match (grant.split_first(), subscription.split_first()) {
            (Some((&">", _)), Some(_)) => true,
            (Some((&"*", grest)), Some((_, srest))) => server_allows(grest, srest),
            (Some((g, grest)), Some((s, srest))) => {
                *s != "*" && *s != ">" && g == s && server_allows(grest, srest)
            }
            (None, None) => true,
            _ => false,
        }
    }

    fn tokens(p: &str) -> Vec<&str> {
        p.split('.').collect()
    }

    #[test]
    fn lies_within_agrees_with_brute_force_over_small_alphabets() {
        let patterns = small_patterns();
        let subjects = small_subjects();
        assert_eq!(patterns.len(), 52);
        for inner in &patterns {
            assert!(is_valid_subject(inner), "{inner}");
            let covered: Vec<&Vec<&str>> = subjects
                .iter()
                .filter(|s| matches(&tokens(inner), s))
                .collect();
            for outer in &patterns {
                let o = tokens(outer);
                let expected = covered.iter().all(|s| matches(&o, s));
                assert_eq!(
                    lies_within(inner, outer),
                    expected,
                    "{inner} within {outer}"
                );
            }
        }
    }

    #[test]
    fn the_reach_of_a_subscribe_grant_is_all_the_server_lets_it_receive() {
        assert_eq!(subscribe_reach("orders.*"), "orders.>");
        assert_eq!(subscribe_reach("*"), ">");
        assert_eq!(subscribe_reach("orders.*.new"), "orders.*.new");
        assert_eq!(subscribe_reach("orders.>"), "orders.>");
        assert_eq!(subscribe_reach("orders.x"), "orders.x");
        let patterns = small_patterns();
        let subjects = small_subjects();
        for grant in &patterns {
            let g = tokens(grant);
            let reach = subscribe_reach(grant);
            let r = tokens(&reach);
            // Every subscription the server allows receives only subjects within the reach…
            for subscription in &patterns {
                let s = tokens(subscription);
                if server_allows(&g, &s) {
                    assert!(
                        lies_within(subscription, &reach),
                        "{grant} lets the client subscribe {subscription}, beyond {reach}"
                    );
                }
            }
            // …and every subject of the reach is received by some allowed subscription.
            for subject in subjects.iter().filter(|s| matches(&r, s)) {
                assert!(
                    patterns.iter().any(
                        |sub| server_allows(&g, &tokens(sub)) && matches(&tokens(sub), subject)
                    ),
                    "{grant}: {subject:?} is in {reach} yet unreachable"
                );
            }
        }
    }

    #[test]
    fn namespace_globs_match_whole_names() {
        for (p, n) in [
            ("*", "anything"),
            ("*", ""),
            ("shop-*", "shop-eu"),
            ("shop-*", "shop-"),
            ("team-?", "team-a"),
            ("*-prod", "payments-prod"),
            ("a*b*c", "axxbyyc"),
            ("kube-system", "kube-system"),
        ] {
            assert!(glob_matches(p, n), "{p} matches {n}");
        }
        for (p, n) in [
            ("shop-*", "shop"),
            ("shop-*", "myshop-eu"),
            ("team-?", "team-ab"),
            ("kube-system", "kube-systems"),
            ("a*b*c", "axxbyy"),
            ("", "a"),
        ] {
            assert!(!glob_matches(p, n), "{p} does not match {n}");
        }
    }
}

/// Random patterns and subjects beyond the exhaustive small-alphabet checks above: longer
/// patterns, several literals, and whitespace, checked against plain reference definitions.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A valid pattern: one to eight tokens of `a`, `b`, `c` or `*`, optionally ending in `>`.
    fn pattern() -> impl Strategy<Value = Vec<String>> {
        (
            prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "*"]), 0..8),
            any::<bool>(),
        )
            .prop_filter_map("at least one token", |(mut tokens, tail)| {
                if tail {
                    tokens.push(">");
                }
                (!tokens.is_empty()).then(|| tokens.into_iter().map(String::from).collect())
            })
    }

    /// NATS matching of a literal subject by a pattern, the reference definition.
    fn matches(pattern: &[String], subject: &[String]) -> bool {
        match (pattern.split_first(), subject.split_first()) {
            (Some((p, _)), Some(_)) if p == ">" => true,
            (Some((p, prest)), Some((s, srest))) => (p == "*" || p == s) && matches(prest, srest),
            (None, None) => true,
            _ => false,
        }
    }

    /// The subjects `pattern` matches with every wildcard taken by the token `d`, which no
    /// pattern names: `>` as one to nine such tokens. A pattern of at most nine tokens matches
    /// all of them only if it matches everything `pattern` matches.
    fn fresh_instances(pattern: &[String]) -> Vec<Vec<String>> {
        let fixed: Vec<String> = pattern
            .iter()
            .filter(|t| *t != ">")
            .map(|t| if t == "*" { "d".into() } else { t.clone() })
            .collect();
        if pattern.last().is_some_and(|t| t == ">") {
            (1..=9)
                .map(|n| {
                    let mut s = fixed.clone();
                    s.extend(std::iter::repeat_n("d".to_string(), n));
                    s
                })
                .collect()
        } else {
            vec![fixed]
        }
    }

    /// The grammar of a permission subject, written plainly.
    fn valid_reference(s: &str) -> bool {
        if s.is_empty() || s.len() > MAX_SUBJECT_LEN {
            return false;
        }
        let tokens: Vec<&str> = s.split('.').collect();
        for (i, t) in tokens.iter().enumerate() {
            let ok = match *t {
                "" => false,
                "*" => true,
                ">" => i == tokens.len() - 1,
                _ => t
                    .chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && c != '*' && c != '>'),
            };
            if !ok {
                return false;
            }
        }
        true
    }

    /// Glob matching, the reference definition (exponential, fine for short inputs).
    fn glob_reference(p: &[u8], n: &[u8]) -> bool {
        match (p.split_first(), n.split_first()) {
            (None, None) => true,
            (Some((b'*', prest)), _) => {
                glob_reference(prest, n) || (!n.is_empty() && glob_reference(p, &n[1..]))
            }
            (Some((c, prest)), Some((d, nrest))) => {
                (*c == b'?' || c == d) && glob_reference(prest, nrest)
            }
            _ => false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn lies_within_is_exactly_containment(inner in pattern(), outer in pattern()) {
            let contained = fresh_instances(&inner).iter().all(|s| matches(&outer, s));
            prop_assert_eq!(lies_within(&inner.join("."), &outer.join(".")), contained);
        }

        #[test]
        fn what_lies_within_matches_nothing_more(
            inner in pattern(),
            outer in pattern(),
            subject in prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "d"]), 1..10),
        ) {
            let subject: Vec<String> = subject.into_iter().map(String::from).collect();
            if lies_within(&inner.join("."), &outer.join(".")) && matches(&inner, &subject) {
                prop_assert!(matches(&outer, &subject));
            }
        }

        #[test]
        fn subject_validity_follows_the_grammar(s in "[ab.*> \t\u{7f}é]{0,16}") {
            prop_assert_eq!(is_valid_subject(&s), valid_reference(&s));
        }

        #[test]
        fn glob_matching_follows_its_definition(p in "[ab*?]{0,8}", n in "[abc]{0,10}") {
            prop_assert_eq!(glob_matches(&p, &n), glob_reference(p.as_bytes(), n.as_bytes()));
        }
    }
}
